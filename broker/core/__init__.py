"""The call domain: no amqtt, no aiohttp."""
