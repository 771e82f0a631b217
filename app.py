"""Forgetting Lab — the Streamlit app. Pages live in pages/; science and storage live in core/."""

from pathlib import Path

import streamlit as st

from pages._ui import sidebar

# A local image: a material-icon or emoji favicon is fetched from an outside host by the browser.
ICON = str(Path(__file__).parent / "data" / "icon.png")
st.set_page_config(page_title="Forgetting Lab", page_icon=ICON, layout="wide")

pages = [
    st.Page("pages/launch.py", title="Launch", icon=":material/rocket_launch:", default=True),
    st.Page("pages/threshold.py", title="Threshold", icon=":material/show_chart:"),
    st.Page("pages/phases.py", title="Phases", icon=":material/timeline:"),
    st.Page("pages/cross_domain.py", title="Cross-domain", icon=":material/grid_on:"),
    st.Page("pages/methods.py", title="Methods", icon=":material/compare_arrows:"),
    st.Page("pages/mitigation.py", title="Mitigation", icon=":material/shield:"),
    st.Page("pages/smoke_test.py", title="Smoke test", icon=":material/chat:"),
    st.Page("pages/pareto.py", title="Pareto", icon=":material/scatter_plot:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/table_rows:"),
    st.Page("pages/about.py", title="About", icon=":material/menu_book:"),
]
nav = st.navigation(pages)
st.session_state["_nav_ready"] = True
deeplink = st.session_state.pop("_deeplink", None)  # see pages/_ui.via_app
if deeplink and deeplink != "launch.py":
    st.switch_page(f"pages/{deeplink}")
sidebar()
nav.run()
