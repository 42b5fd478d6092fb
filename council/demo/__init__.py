"""The demo council: its config, checkpoints and the `council demo` logic."""
