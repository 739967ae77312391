// Decodes Sparkplug B payloads with Eclipse Tahu's JavaScript library (sparkplug-payload,
// the decoder behind Node-RED's Sparkplug nodes). Input: one message per line,
// "TOPIC<TAB>BASE64 PAYLOAD". Output: one JSON object per message,
// {"topic", "seq", "metrics": [{"name", "alias", "datatype", "value", "is_historical"}]}.
// Longs become numbers (or strings past 2^53); a value Tahu cannot decode is null.
const sparkplug = require("sparkplug-payload").get("spBv1.0");
const readline = require("readline");

function plain(v) {
  if (v === null || v === undefined) return null;
  if (typeof v === "object" && typeof v.toNumber === "function") {
    return Number.isSafeInteger(v.toNumber()) ? v.toNumber() : v.toString();
  }
  return v;
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const [topic, b64] = line.split("\t");
  const p = sparkplug.decodePayload(Buffer.from(b64, "base64"));
  const metrics = (p.metrics || []).map((m) => ({
    name: m.name === undefined ? null : m.name,
    alias: plain(m.alias),
    datatype: m.type === undefined ? null : m.type,
    value: plain(m.value),
    is_historical: m.isHistorical === true,
  }));
  console.log(JSON.stringify({ topic, seq: plain(p.seq), metrics }));
});
