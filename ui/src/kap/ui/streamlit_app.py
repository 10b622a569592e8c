"""The kap explorer's frame: sign-in (when configured), the page list, one store error line.

    kap ui [--port 8501]            # runs: streamlit run <this file>

Pages live in `app_pages/` and contain UI only; their data comes through `kap.ui.queries`,
`kap.ui.trajectory_data` and `kap.ui.graph_data`, their connections through `kap.ui.stores`.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from kap.ui import auth, stores

HERE = Path(__file__).parent / "app_pages"

PAGES = {
    "overview": st.Page(HERE / "overview.py", title="Overview", icon=":material/dashboard:",
                        url_path="overview", default=True),
    "graph": st.Page(HERE / "graph.py", title="Graph", icon=":material/hub:", url_path="graph"),
    "trajectories": st.Page(HERE / "trajectories.py", title="Trajectories",
                            icon=":material/timeline:", url_path="trajectories"),
    "campaigns": st.Page(HERE / "campaigns.py", title="Campaigns",
                         icon=":material/rocket_launch:", url_path="campaigns"),
    "curation": st.Page(HERE / "curation.py", title="Curation", icon=":material/database:",
                        url_path="curation"),
    "training": st.Page(HERE / "training.py", title="Training", icon=":material/monitoring:",
                        url_path="training"),
}  # fmt: skip


def main() -> None:
    st.set_page_config(page_title="kap explorer", page_icon=":material/hub:", layout="wide")
    auth.gate()
    page = st.navigation(list(PAGES.values()))
    try:
        page.run()
    except stores.UNREACHABLE as exc:
        st.error(stores.unreachable(exc))


main()
