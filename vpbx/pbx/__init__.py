"""The PBX: directory (users, numbers, groups, schedules, menus), routing; the call engine comes later."""
