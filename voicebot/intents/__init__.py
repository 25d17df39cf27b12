"""The intent stage: commands matched to intents before the LLM and handled here (timers, alarms, the time,
the volume, lists, "stop"), with the state they keep."""
