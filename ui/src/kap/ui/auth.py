"""Optional sign-in: when `.streamlit/secrets.toml` has an `[auth]` section (OIDC: client_id,
client_secret, server_metadata_url, redirect_uri, cookie_secret), every page is behind
`st.login()`; without one the explorer runs open.

Streamlit's OIDC flow needs Authlib (`pip install "Authlib>=1.3.2"`), which kap-ui does not
install: a configured sign-in without it stops every page with that message rather than run
open by accident.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import streamlit as st
from streamlit.errors import StreamlitSecretNotFoundError

REQUIRED = ("client_id", "client_secret", "server_metadata_url", "redirect_uri", "cookie_secret")


def auth_config() -> dict[str, Any] | None:
    """The `[auth]` secrets, or None when there are none (no secrets.toml is not an error)."""
    try:
        if "auth" not in st.secrets:
            return None
        section = st.secrets["auth"]
    except (FileNotFoundError, StreamlitSecretNotFoundError):
        return None
    return dict(section) if section is not None else None


def _missing(config: dict[str, Any]) -> list[str]:
    """Required keys missing from `[auth]`, also where providers are listed in subsections."""
    providers = [v for v in config.values() if isinstance(v, dict)]
    keys = set(config) | {k for p in providers for k in p}
    return [k for k in REQUIRED if k not in keys]


def gate() -> None:
    """Stop the run unless sign-in is off or the user is signed in; offer logout when in."""
    config = auth_config()
    if config is None:
        return
    if importlib.util.find_spec("authlib") is None:
        st.error(
            "Sign-in is configured ([auth] in secrets.toml) but Authlib is not installed: "
            'install it with `pip install "Authlib>=1.3.2"` in the explorer\'s environment.'
        )
        st.stop()
    if missing := _missing(config):
        st.error(f"Sign-in is configured but [auth] lacks {', '.join(missing)}.")
        st.stop()
    if not st.user.is_logged_in:
        st.title("kap explorer")
        st.write("Sign in to explore campaigns, graphs and trajectories.")
        st.button("Log in", on_click=st.login, type="primary")
        st.stop()
    with st.sidebar:
        st.caption(f"Signed in as {st.user.get('name') or st.user.get('email') or 'user'}")
        st.button("Log out", on_click=st.logout)
