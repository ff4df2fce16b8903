"""Connects with paho-mqtt (2.x), subscribes to a topic, publishes to it and waits for the
message to come back. Prints "ROUNDTRIP OK <payload>" and exits 0 on success; exits 1 with
the reason otherwise. Used by the broker's interop tests for WebSocket (ws://, wss://).

usage: paho_roundtrip.py --port P [--transport tcp|websockets] [--path /mqtt]
                         [--cafile ca.pem [--cert c.pem --key c.key]] [--v5]
"""
import argparse
import ssl
import sys
import threading

import paho.mqtt.client as mqtt

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, required=True)
p.add_argument("--transport", default="tcp", choices=["tcp", "websockets"])
p.add_argument("--path", default="/mqtt")
p.add_argument("--cafile")
p.add_argument("--cert")
p.add_argument("--key")
p.add_argument("--v5", action="store_true")
p.add_argument("--topic", default="interop/paho")
p.add_argument("--timeout", type=float, default=15.0)
args = p.parse_args()

protocol = mqtt.MQTTv5 if args.v5 else mqtt.MQTTv311
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-roundtrip",
                     transport=args.transport, protocol=protocol)
if args.transport == "websockets":
    client.ws_set_options(path=args.path)
if args.cafile:
    client.tls_set(ca_certs=args.cafile, certfile=args.cert, keyfile=args.key,
                   cert_reqs=ssl.CERT_REQUIRED)

payload = "hello over " + args.transport + (" tls" if args.cafile else "")
done = threading.Event()
failure = []


def on_connect(client, userdata, flags, reason_code, properties):
    if reason_code.is_failure:
        failure.append("connect refused: %s" % reason_code)
        done.set()
        return
    client.subscribe(args.topic, qos=1)


def on_subscribe(client, userdata, mid, reason_codes, properties):
    if any(rc.is_failure for rc in reason_codes):
        failure.append("subscribe refused: %s" % reason_codes)
        done.set()
        return
    client.publish(args.topic, payload, qos=1)


def on_message(client, userdata, msg):
    if msg.payload.decode() == payload:
        print("ROUNDTRIP OK " + payload, flush=True)
        done.set()


client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
try:
    client.connect(args.host, args.port, keepalive=30)
except Exception as e:  # noqa: BLE001 - report any connection failure
    print("connect failed: %r" % e, file=sys.stderr, flush=True)
    sys.exit(1)
client.loop_start()
ok = done.wait(args.timeout)
client.disconnect()
client.loop_stop()
if failure or not ok:
    print(failure[0] if failure else "no round trip within %ss" % args.timeout, file=sys.stderr, flush=True)
    sys.exit(1)
