"""The app's widgets: conversation view, prompt, sidebar, status line, job row, and the conversation tab."""
