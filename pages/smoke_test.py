"""Type a prompt; the base model and a point's fine-tuned model answer side by side."""

import streamlit as st

from core import sources
from core.errors import LabError
from core.smoke import (
    MAX_NEW_TOKENS,
    SmokeModel,
    StreamResult,
    check_settings,
    clean_prompt,
    stored_check,
)
from pages._ui import labels, no_results, read, runs, store, via_app

via_app(__file__)

st.title("Smoke test")
st.caption(
    f"The check of {sources.cite('003')}: a fine-tuned model can look fine on metrics and "
    "still return nothing, or loop. An answer fails with no new tokens, only punctuation, a "
    "repetition loop, one word over most of it, few distinct words, or a copy of the prompt; "
    "the reasons are shown under it."
)


@st.cache_resource(max_entries=2, show_spinner="Loading the model and adapter…")
def _model(run_id: str, adapter: str | None) -> SmokeModel:
    return SmokeModel.for_point(store().get_run(run_id), adapter)


df = runs()
done = df[df["points_done"] > 0] if not df.empty else df
if done.empty:
    no_results("fine-tuned points")
    st.stop()
lab = labels(done)
c1, c2 = st.columns([2, 1])
run_id = c1.selectbox("Run", list(lab), format_func=lab.get)
pts = store().finished_adapters(run_id)
opts = list(range(len(pts)))
deg = pts.degradation_pct
i = c2.selectbox(
    "Point",
    opts,
    # the most-forgotten point first: where a silent failure is likeliest
    index=int(deg.idxmax()) if deg.notna().any() else len(opts) - 1,
    format_func=lambda k: (
        f"{pts.scale[k]:,} samples · seed {pts.seed[k]} · general PPL {deg[k]:+,.1f}%"
    ),
    help="Each finished point with its general-knowledge perplexity change; the list opens on "
    "the point that forgot most.",
)
check = stored_check(read("generations_df", run_id, int(pts.scale[i]), int(pts.seed[i])))
if check.passed is False:  # a finding about the model, not an error of the app
    st.warning(check.sentence(), icon=":material/report:")
elif check.passed:
    st.success(check.sentence(), icon=":material/check_circle:")
else:
    st.caption(check.sentence())
adapter = pts.adapter_path[i]
if not adapter:
    st.warning(
        "This point has no saved adapter (full fine-tuning points are not saved, or saving was off); "
        "both columns will show the base model."
    )

with st.form("prompt"):
    prompt = st.text_area("Prompt", "The capital of France is", max_chars=2000)
    c1, c2 = st.columns(2)
    max_new = c1.slider("Max new tokens", 1, MAX_NEW_TOKENS, 40)
    temp = c2.slider("Temperature (0 = greedy)", 0.0, 2.0, 0.0, 0.05)
    go = st.form_submit_button("Generate", type="primary")

if go:
    try:
        clean_prompt(prompt)
        check_settings(max_new, temp)
        m = _model(run_id, adapter)
    except LabError as e:
        st.error(str(e))
        st.stop()
    left, right = st.columns(2)
    for col, adapted, title in (
        (left, False, "Base model"),
        (right, True, f"After fine-tuning on {pts.scale[i]:,} samples"),
    ):
        with col:
            st.markdown(f"**{title}**")
            res = StreamResult()
            st.write_stream(m.stream(prompt, adapted, max_new, temp, result=res))
            if res.ok:
                st.success(
                    f"Passed the smoke check: {res.new_tokens} new tokens, none of the failure "
                    "signs above",
                    icon=":material/check_circle:",
                )
            else:
                st.error(
                    f"Smoke test failed: {res.new_tokens} new tokens — " + "; ".join(res.reasons),
                    icon=":material/error:",
                )
