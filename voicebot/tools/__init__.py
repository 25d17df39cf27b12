"""The tools that measure and check voicebot from outside: bench, bench_http, soak, smoke and doctor."""
