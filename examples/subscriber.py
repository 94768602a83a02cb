"""Print every edged prediction: python examples/subscriber.py [HOST [PORT]]  (paho-mqtt 2)."""

import contextlib
import json
import sys
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
    client.subscribe("edged/+/prediction", qos=1)  # here, so a reconnect subscribes again


def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
    event = json.loads(msg.payload)
    print(event["device"], event["label"], event["score"], flush=True)


host = sys.argv[1] if len(sys.argv) > 1 else "localhost"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 1883
client = mqtt.Client(CallbackAPIVersion.VERSION2)
client.on_connect = on_connect
client.on_message = on_message
client.connect(host, port)
with contextlib.suppress(KeyboardInterrupt):
    client.loop_forever()
