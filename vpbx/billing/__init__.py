"""Services management («Управление услугами»): catalogue, prices, per-domain state, charges."""
