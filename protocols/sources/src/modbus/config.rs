//! `[[sources.modbus]]`: every config key of a Modbus source (TCP or RTU) and its validation.

use std::time::Duration;

use serde::Deserialize;

use super::codec::{ByteOrder, DataType};
use super::plan::{PlanLimits, Table};
use crate::backoff::ReconnectConfig;
use edge_wire::config_check::{Issues, KeyPath};

/// One Modbus connection (a TCP endpoint or a serial line) and the tags polled over it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusSourceConfig {
    /// Unique source name (logs, metrics).
    pub name: String,
    /// Modbus TCP: `tcp = { address = "10.0.0.5:502" }`. Exactly one of `tcp` / `rtu`.
    pub tcp: Option<TcpConfig>,
    /// Modbus RTU over a serial line: `[sources.modbus.rtu]`.
    pub rtu: Option<RtuConfig>,
    /// Default unit (slave) id of the tags; a tag may override it (multi-drop RTU, gateways).
    #[serde(default = "default_unit")]
    pub unit_id: u8,
    /// Default poll period of the tags; a tag may override it.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long to wait for one response.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra attempts of a request after a timeout or transport error before its tags go bad.
    #[serde(default = "default_retries")]
    pub retries: u8,
    /// Largest register read (protocol max 125).
    #[serde(default = "default_max_regs")]
    pub max_registers_per_read: u16,
    /// Unmapped registers a read may bridge to join two tags into one request.
    #[serde(default = "default_reg_gap")]
    pub max_register_gap: u16,
    /// Largest coil / discrete-input read (protocol max 2000).
    #[serde(default = "default_max_bits")]
    pub max_bits_per_read: u16,
    /// Unmapped bits a read may bridge.
    #[serde(default = "default_bit_gap")]
    pub max_bit_gap: u16,
    /// How fast to reconnect after the device was lost.
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    /// The values to read (`[[sources.modbus.tags]]`).
    pub tags: Vec<ModbusTagConfig>,
}

/// `tcp = { address }`: a Modbus TCP device or gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// `host:port` of the device or gateway (port 502 is the standard).
    pub address: String,
}

/// `rtu = { device, ... }`: a serial line (RS-485/RS-232) with Modbus RTU framing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtuConfig {
    /// Serial device, e.g. `/dev/ttyUSB0` or `/dev/ttymxc2`.
    pub device: String,
    /// Line speed (default 19200).
    #[serde(default = "default_baud")]
    pub baud_rate: u32,
    /// `none` (default), `even` or `odd`.
    #[serde(default)]
    pub parity: Parity,
    /// Data bits per character (default 8).
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// Stop bits (default 1).
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit.
    #[default]
    None,
    /// Even parity.
    Even,
    /// Odd parity.
    Odd,
}

/// One value on the device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusTagConfig {
    /// Tag name, unique across the agent.
    pub name: String,
    /// `holding`, `input`, `coil` or `discrete`.
    pub table: Table,
    /// 0-based protocol address (register 40001 in "Modicon" numbering is `table = "holding"`,
    /// `address = 0`).
    pub address: u16,
    /// Value type; default `u16` for registers, `bool` for coils and discrete inputs.
    #[serde(rename = "type")]
    pub data_type: Option<DataType>,
    /// Byte/word order of multi-register values: `abcd` (default), `cdab`, `badc`, `dcba`.
    #[serde(default)]
    pub order: ByteOrder,
    /// For `type = "bool"` in a register table: which bit (0 = least significant).
    pub bit: Option<u8>,
    /// Engineering value = raw * scale + offset.
    #[serde(default = "one")]
    pub scale: f64,
    /// Added after scaling (engineering value = raw * scale + offset).
    #[serde(default)]
    pub offset: f64,
    /// Overrides the source's `unit_id`.
    pub unit_id: Option<u8>,
    /// Overrides the source's `poll_interval`.
    #[serde(default, with = "humantime_serde::option")]
    pub poll_interval: Option<Duration>,
}

impl ModbusTagConfig {
    /// The value type, defaulted by table: `bool` for bit tables, `u16` for registers.
    pub fn data_type(&self) -> DataType {
        self.data_type.unwrap_or(if self.table.is_bits() {
            DataType::Bool
        } else {
            DataType::U16
        })
    }
    /// Registers or bits this tag occupies.
    pub fn count(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.data_type().register_count()
        }
    }
}

fn default_unit() -> u8 {
    1
}
fn default_poll() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_retries() -> u8 {
    1
}
fn default_max_regs() -> u16 {
    125
}
fn default_reg_gap() -> u16 {
    10
}
fn default_max_bits() -> u16 {
    2000
}
fn default_bit_gap() -> u16 {
    32
}
fn default_baud() -> u32 {
    19200
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn one() -> f64 {
    1.0
}

impl ModbusSourceConfig {
    /// The read-coalescing limits of this source.
    pub fn limits(&self) -> PlanLimits {
        PlanLimits {
            max_registers: self.max_registers_per_read,
            max_register_gap: self.max_register_gap,
            max_bits: self.max_bits_per_read,
            max_bit_gap: self.max_bit_gap,
        }
    }

    /// Semantic checks serde cannot express. `at` is this source's key path.
    pub fn validate(&self, at: &KeyPath, issues: &mut Issues) {
        match (&self.tcp, &self.rtu) {
            (Some(_), Some(_)) => issues.push(
                at.key("rtu"),
                "set either `tcp` or `rtu`, not both: one source is one connection",
            ),
            (None, None) => issues.push(
                at.key("name"),
                format!(
                    "Modbus source `{}` needs a transport: add `tcp = {{ address = \"host:502\" }}` \
                     or an `[sources.modbus.rtu]` table with `device`",
                    self.name
                ),
            ),
            _ => {}
        }
        if let Some(tcp) = &self.tcp {
            issues.check(
                tcp.address
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
                at.key("tcp").key("address"),
                || {
                    format!(
                        "`{}` is not `host:port` (e.g. \"192.168.1.10:502\")",
                        tcp.address
                    )
                },
            );
        }
        if let Some(rtu) = &self.rtu {
            let p = at.key("rtu");
            issues.check(!rtu.device.is_empty(), p.key("device"), || {
                "serial device path is empty (e.g. \"/dev/ttyUSB0\")".into()
            });
            issues.check((5..=8).contains(&rtu.data_bits), p.key("data_bits"), || {
                format!("data_bits {} must be 5, 6, 7 or 8", rtu.data_bits)
            });
            issues.check(matches!(rtu.stop_bits, 1 | 2), p.key("stop_bits"), || {
                format!("stop_bits {} must be 1 or 2", rtu.stop_bits)
            });
            issues.check(rtu.baud_rate > 0, p.key("baud_rate"), || {
                "baud_rate must be > 0".into()
            });
        }
        check_unit(self.unit_id, at.key("unit_id"), issues);
        check_interval(self.poll_interval, at.key("poll_interval"), issues);
        issues.check(!self.timeout.is_zero(), at.key("timeout"), || {
            "timeout must be > 0 (e.g. \"1s\")".into()
        });
        issues.check(
            (1..=125).contains(&self.max_registers_per_read),
            at.key("max_registers_per_read"),
            || {
                format!(
                    "{} is outside 1..=125 (the protocol maximum is 125)",
                    self.max_registers_per_read
                )
            },
        );
        issues.check(
            (1..=2000).contains(&self.max_bits_per_read),
            at.key("max_bits_per_read"),
            || {
                format!(
                    "{} is outside 1..=2000 (the protocol maximum is 2000)",
                    self.max_bits_per_read
                )
            },
        );
        issues.check(!self.tags.is_empty(), at.key("tags"), || {
            "no tags: add at least one [[sources.modbus.tags]] table".into()
        });
        for (i, t) in self.tags.iter().enumerate() {
            let tp = at.key("tags").index(i);
            let ty = t.data_type();
            if t.table.is_bits() {
                issues.check(ty == DataType::Bool, tp.key("type"), || {
                    format!(
                        "{} table holds single bits: type must be \"bool\", not \"{}\"",
                        t.table.name(),
                        ty.name()
                    )
                });
                issues.check(t.bit.is_none(), tp.key("bit"), || {
                    "`bit` only applies to bool tags in holding/input registers".into()
                });
            } else if ty == DataType::Bool {
                issues.check(t.bit.is_none_or(|b| b <= 15), tp.key("bit"), || {
                    format!("bit {} is outside 0..=15", t.bit.unwrap_or(0))
                });
            } else {
                issues.check(t.bit.is_none(), tp.key("bit"), || {
                    format!(
                        "`bit` only applies to type \"bool\" (this tag is \"{}\")",
                        ty.name()
                    )
                });
            }
            issues.check(
                u32::from(t.address) + u32::from(t.count()) <= 65536,
                tp.key("address"),
                || {
                    format!(
                        "a {} at address {} runs past the last address 65535",
                        ty.name(),
                        t.address
                    )
                },
            );
            let max = if t.table.is_bits() {
                self.max_bits_per_read
            } else {
                self.max_registers_per_read
            };
            issues.check(t.count() <= max, tp.key("type"), || {
                format!(
                    "a {} needs {} registers but max_registers_per_read is {max}",
                    ty.name(),
                    t.count()
                )
            });
            issues.check(
                t.scale.is_finite() && t.scale != 0.0,
                tp.key("scale"),
                || format!("scale {} must be a finite, non-zero number", t.scale),
            );
            issues.check(t.offset.is_finite(), tp.key("offset"), || {
                format!("offset {} must be finite", t.offset)
            });
            if let Some(u) = t.unit_id {
                check_unit(u, tp.key("unit_id"), issues);
            }
            if let Some(p) = t.poll_interval {
                check_interval(p, tp.key("poll_interval"), issues);
            }
        }
    }
}

fn check_unit(u: u8, at: KeyPath, issues: &mut Issues) {
    issues.check(u <= 247, at, || {
        format!("unit id {u} is outside 0..=247 (248-255 are reserved by the protocol)")
    });
}

fn check_interval(d: Duration, at: KeyPath, issues: &mut Issues) {
    issues.check(d >= Duration::from_millis(1), at, || {
        "poll_interval must be at least 1ms (e.g. \"500ms\")".into()
    });
}
