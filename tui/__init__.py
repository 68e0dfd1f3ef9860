"""Front ends of rwkv-tui: the command line (`tui.cli`) and the full-screen Textual app (`tui.app`)."""
