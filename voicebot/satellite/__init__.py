"""voicebot as a Home Assistant voice satellite over the ESPHome native API, as linux-voice-assistant is."""

from voicebot.satellite.device import Satellite, check_satellite, check_satellite_config

__all__ = ["Satellite", "check_satellite", "check_satellite_config"]
