"""The Debian package's own tests use the session-wide `deb` fixture of tests/conftest.py."""
