"""Staff two-factor sign-in (两步验证): TOTP enrolment, recovery codes, the second sign-in step and its guard."""
