"""Flow control with a small Receive Maximum (MQTT-3.3.4-9): a paho-mqtt 2.x v5 client
announces Receive Maximum N, subscribes at QoS 2 to a topic and publishes COUNT messages to it
at QoS 1 and 2 alternately, as fast as paho lets it, then waits for all of them to come back
over the same connection, in order per QoS (paho hands a QoS 2 message to the application only
at PUBREL, so the order across QoS levels is its own). Prints "FLOW OK <count>" and exits 0;
exits 1 with the reason otherwise (a refused or dropped connection, a missing or reordered
message).

usage: paho_flow.py --port P [--receive-maximum N] [--count COUNT]
"""
import argparse
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, required=True)
p.add_argument("--receive-maximum", type=int, default=1)
p.add_argument("--count", type=int, default=50)
p.add_argument("--topic", default="interop/flow")
p.add_argument("--timeout", type=float, default=15.0)
args = p.parse_args()

client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-flow",
                     protocol=mqtt.MQTTv5)
done = threading.Event()
failure = []
received = []


def on_connect(client, userdata, flags, reason_code, properties):
    if reason_code.is_failure:
        failure.append("connect refused: %s" % reason_code)
        done.set()
        return
    client.subscribe(args.topic, qos=2)


def on_subscribe(client, userdata, mid, reason_codes, properties):
    if any(rc.is_failure for rc in reason_codes):
        failure.append("subscribe refused: %s" % reason_codes)
        done.set()
        return
    for i in range(args.count):
        client.publish(args.topic, "m%d" % i, qos=1 + i % 2)


def on_message(client, userdata, msg):
    received.append(msg.payload.decode())
    if len(received) == args.count:
        done.set()


def on_disconnect(client, userdata, flags, reason_code, properties):
    if not done.is_set():
        failure.append("disconnected: %s" % reason_code)
        done.set()


client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.on_disconnect = on_disconnect
props = Properties(PacketTypes.CONNECT)
props.ReceiveMaximum = args.receive_maximum
client.connect(args.host, args.port, keepalive=30, clean_start=True, properties=props)
client.loop_start()
finished = done.wait(args.timeout)
client.disconnect()
client.loop_stop()
if failure:
    print("FAIL " + "; ".join(failure), flush=True)
    sys.exit(1)
if not finished:
    print("FAIL got %d of %d messages in %.0f s" % (len(received), args.count, args.timeout),
          flush=True)
    sys.exit(1)
for qos in (1, 2):
    expected = ["m%d" % i for i in range(args.count) if 1 + i % 2 == qos]
    got = [m for m in received if 1 + int(m[1:]) % 2 == qos]
    if got != expected:
        print("FAIL QoS %d out of order or duplicated: %s" % (qos, got), flush=True)
        sys.exit(1)
print("FLOW OK %d" % len(received), flush=True)
