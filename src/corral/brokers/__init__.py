"""Connections to message brokers (AMQP with aio-pika, MQTT with aiomqtt, and a lean MQTT
reader of corral's own for high-rate feeds), kept alive.

The control layer registers consumers and publishes through these; they never see the store.
"""
