"""What every customer channel (SMS, WhatsApp, email) shares: templates and
their fields, quiet hours, and the rules of sending (claims, opt-outs,
staleness)."""
