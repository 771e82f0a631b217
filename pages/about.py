"""The sources the app reproduces: what each one claims, what we reproduce, where we differ."""

import streamlit as st

from core.sources import SOURCES
from pages._ui import via_app

via_app(__file__)

st.title("About")
st.markdown(
    "Forgetting Lab fine-tunes a fresh adapter at each dataset size and measures, before and "
    "after, the model's perplexity on general text, on the training domain, its multiple-choice "
    "accuracy and whether it still answers. It reproduces four published sources and takes "
    "the growth forms of its forecast from two scaling-law papers; every "
    "number it ships was measured by this project (see `docs/RESULTS.md` for the full "
    "comparison, commands and hardware)."
)
for s in SOURCES:
    st.subheader(s.cite)
    st.markdown(f"**{s.title}**  \n{s.authors}, {s.year} · {s.kind}")
    st.markdown(f"**What the app reproduces.** {s.reproduces}")
    st.markdown(f"**Where our numbers differ.** {s.differs}")
st.caption(
    "Our measurements use the embedded SmolLM2-135M-Instruct, not the sources' models (GPT-2 "
    "124M; LLaMA-3.1-8B and Qwen-2.5-7B), so read the comparisons as shapes, not as exact "
    "reproductions."
)
