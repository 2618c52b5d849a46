"""Optional pieces a project turns on itself (README "Notifications")."""
