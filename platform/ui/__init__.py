"""The web interface: a JSON API over the store and the pages that draw it (served by `bitsmith ui`)."""
