"""MQTT 5.0 beside amqtt's 3.1.1: codec, connection, and the broker mixin that serves v5 clients."""
