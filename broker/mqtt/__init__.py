"""The MQTT engine over amqtt: the only package that touches amqtt internals."""
