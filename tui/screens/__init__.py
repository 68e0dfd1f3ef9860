"""The app's screens: chat (main), models, jobs, settings (sampling), help, welcome, and small dialogs."""
