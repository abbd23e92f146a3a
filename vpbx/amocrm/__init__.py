"""The amoCRM integration (amocrm.md): client, OAuth, widget, scenarios, ИМК routing, jobs, emulator."""
