"""Who may do what: users and their roles, API clients and their scopes, sessions, and the one
FastAPI dependency every route declares its permission through (:func:`pacs.auth.access.require`).

- :mod:`pacs.auth.roles`: the permissions and the table that maps each role to them;
- :mod:`pacs.auth.models`: the user and token tables;
- :mod:`pacs.auth.accounts`: the only writer of those tables (passwords hashed with argon2,
  lockout after failed logins, tokens stored hashed);
- :mod:`pacs.auth.sessions`: the signed browser-session cookie and its CSRF token;
- :mod:`pacs.auth.access`: who is asking (bearer token, HTTP Basic, session cookie) and whether
  they may (401 with ``WWW-Authenticate``, 403);
- :mod:`pacs.auth.pages`: the login and logout pages.
"""
