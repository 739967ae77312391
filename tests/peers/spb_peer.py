#!/usr/bin/env python3
"""Sparkplug B host-side peer for the interop tests, independent of the agent's code: the
payloads are decoded and encoded with protobuf and the Eclipse Tahu schema as generated in
pysparkplug (loaded by spb_decode.py), and MQTT is paho-mqtt.

  spb_peer.py listen HOST:PORT   -> one JSON line per message on spBv1.0/# (and edge/#):
                                    {"topic", "payload": decoded, "raw": base64} or
                                    {"topic", "text"}
  spb_peer.py rebirth FILE       -> write an NCMD payload with Node Control/Rebirth = true
"""
import base64
import json
import sys

import spb_decode


def listen(addr):
    import paho.mqtt.client as mqtt

    host, _, port = addr.partition(":")

    def on_msg(c, u, msg):
        try:
            if msg.topic.startswith("spBv1.0/") and not msg.topic.startswith("spBv1.0/STATE/"):
                line = {"topic": msg.topic, "payload": spb_decode.decode(msg.payload),
                        "raw": base64.b64encode(msg.payload).decode()}
            else:
                line = {"topic": msg.topic, "text": msg.payload.decode(errors="replace")}
        except Exception as e:  # an undecodable payload is a finding, not a crash
            line = {"topic": msg.topic, "error": str(e)}
        line["retain"] = bool(msg.retain)
        print(json.dumps(line), flush=True)

    def on_connect(c, u, flags, rc, props=None):
        c.subscribe([("spBv1.0/#", 1), ("edge/#", 1)])
        print(json.dumps({"subscribed": True}), flush=True)

    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    c.on_message = on_msg
    c.on_connect = on_connect
    c.connect(host, int(port or 1883))
    c.loop_forever()


def rebirth(path):
    p = spb_decode.PB.Payload()
    m = p.metrics.add()
    m.name = "Node Control/Rebirth"
    m.datatype = 11  # Boolean
    m.boolean_value = True
    with open(path, "wb") as f:
        f.write(p.SerializeToString())


if __name__ == "__main__":
    cmd, arg = sys.argv[1], sys.argv[2]
    {"listen": listen, "rebirth": rebirth}[cmd](arg)
