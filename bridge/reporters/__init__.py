"""Where build status goes: GitHub (check runs or commit statuses) and GitLab (commit statuses)."""
