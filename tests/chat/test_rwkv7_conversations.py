"""Conversations on a real RWKV-7 model (tiny, random, World vocabulary) with the G1 template: resume,
regenerate, edit and fork read nothing again; switching to an RWKV-4 model and back reads the
transcript once, then nothing. Tokens are counted through the models."""

from __future__ import annotations

import numpy as np
import pytest

import runtime
from runtime.chat.conversation import Conversation
from runtime.chat.store import ConversationStore
from runtime.convert import convert
from runtime.quant.types import DType
from tests.chat.test_conversation_model import Counting
from tests.support.gguf_model import write_model_gguf
from tests.support.synthetic import v4_state_dict, v7_state_dict
from tests.support.torch_writer import write_pth

WORLD = 65536


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("v7chat")
    sd7 = v7_state_dict(n_layer=2, n_embd=64, head_size=32, n_vocab=WORLD, ranks=(8, 8, 8, 16), seed=3)
    g1 = folder / "rwkv7-g1-tiny.gguf"
    convert(write_pth(folder / "rwkv7-g1-tiny.pth", sd7, dtype="float32"), g1, "f32")
    w4 = write_model_gguf(folder / "rwkv4-world-tiny.gguf", v4_state_dict(n_layer=1, n_embd=32, n_vocab=WORLD,
                                                                          seed=4), DType.F32)
    return g1, w4


@pytest.fixture(scope="module")
def models(files):
    loaded = [runtime.load_model(p, threads=1) for p in files]
    yield loaded
    for m in loaded:
        m.close()


@pytest.fixture
def store(tmp_path):
    with ConversationStore.open(tmp_path / "c.sqlite3") as s:
        yield s


def test_g1_on_rwkv7_resume_regenerate_fork_read_nothing_again(store, models):
    v7 = Counting(models[0])
    conv = Conversation.start(store, v7, family="g1", seed=5, think=True, system="Be brief.")
    conv.set_sampling(conv.sampling.replace(max_tokens=6))
    conv.send("Hello")
    conv.set_think(False)
    conv.send("Again")
    before = v7.fed
    reply = conv.regenerate()
    assert v7.fed - before <= reply.n_tokens + 8  # the reply (and a rewind tail) only
    before = v7.fed
    conv.fork()
    again = Counting(models[0])
    resumed = Conversation.resume(store, conv.id, again)
    assert v7.fed == before and again.fed == 0
    assert resumed.think is False and [m.think for m in resumed.messages] == [True, True, False, False]
    assert np.array_equal(resumed.state.data, conv.state.data)
    assert np.array_equal(resumed.state.logits, conv.state.logits)


def test_switching_between_rwkv4_and_rwkv7_reads_the_transcript_once(store, models):
    v7, v4 = Counting(models[0]), Counting(models[1])
    conv = Conversation.start(store, v7, family="g1", seed=2, think=True)
    conv.set_sampling(conv.sampling.replace(max_tokens=5))
    conv.send("What is RWKV?")
    conv.switch_model(v4, model_ref="w4", family="world")
    assert v4.fed > 0
    direct = models[1].forward(models[1].tokenizer.encode(
        "".join(conv._fed(i) for i in range(len(conv._messages)))))[1]
    np.testing.assert_allclose(conv.state.data, direct.data, rtol=1e-5, atol=1e-5)  # read once, as a whole
    conv.send("And now?")
    fed7 = v7.fed
    conv.switch_model(v7, model_ref="g1", family="g1")
    read = v7.fed - fed7
    assert 0 < read < len(models[0].tokenizer.encode("".join(conv._fed(i) for i in range(len(conv._messages)))))
    fed4 = v4.fed
    conv.switch_model(v4, model_ref="w4", family="world")  # back: every state is saved
    assert v4.fed == fed4
