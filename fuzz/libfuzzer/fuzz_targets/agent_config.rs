#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    edge_fuzz::run("agent_config", data);
});
