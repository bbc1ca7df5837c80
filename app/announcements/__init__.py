"""Platform notices (公告): short texts admins post for agents, staff or both, shown on their home pages."""
