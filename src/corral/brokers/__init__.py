"""Connections to message brokers (AMQP with aio-pika, MQTT with aiomqtt), kept alive.

The control layer registers consumers and publishes through these; they never see the store.
"""
