"""Connects with a will message and then does nothing but keep the connection alive, so that
the test can kill it with SIGKILL (no DISCONNECT is sent) and check the broker publishes the
will. Prints "CONNECTED" once the broker accepted the connection.

usage: paho_will.py --port P --topic T --payload X [--v5]
"""
import argparse
import sys
import threading

import paho.mqtt.client as mqtt

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, required=True)
p.add_argument("--topic", required=True)
p.add_argument("--payload", required=True)
p.add_argument("--v5", action="store_true")
args = p.parse_args()

protocol = mqtt.MQTTv5 if args.v5 else mqtt.MQTTv311
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-will-" + ("v5" if args.v5 else "v311"),
                     protocol=protocol)
client.will_set(args.topic, args.payload, qos=1, retain=False)


def on_connect(client, userdata, flags, reason_code, properties):
    if reason_code.is_failure:
        print("connect refused: %s" % reason_code, file=sys.stderr, flush=True)
        sys.exit(1)
    print("CONNECTED", flush=True)


client.on_connect = on_connect
client.connect(args.host, args.port, keepalive=60)
# Runs until killed.
client.loop_forever()
