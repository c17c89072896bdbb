"""Small helpers shared by the hooks, sensors and triggers of the provider."""
