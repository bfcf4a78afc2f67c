"""The offline Runware emulator: a real HTTP server that speaks the Runware REST protocol."""
