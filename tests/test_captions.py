"""Captions (issue 30's first part): the synthetic clips' captions from their own parameters, held-out test
phrasings, a folder's captions.tsv, AIST++'s genre codes, and captions through shards."""
import re

import pytest
import torch

import data
import media
import synthetic

CLIP = data.ClipConfig(frames=6, size=16, margin=2)


def test_captions_are_deterministic_and_say_what_the_clip_holds():
    ds = data.SyntheticDataset(CLIP, "train", 40, seed=3)
    again = data.SyntheticDataset(CLIP, "train", 40, seed=3)
    for i in range(40):
        item = ds[i]
        assert item["caption"] == again[i]["caption"] and item["caption"][0].isupper()
        if float(item["tempo"]) > 0:  # a dance clip states its tempo in bpm, rounded
            assert f"{round(float(item['tempo']))} " in item["caption"]
        else:
            balls = re.findall(r"(big|small) (\w+) ball", item["caption"])
            counted = re.search(r"\b(one|two|three) (bouncing )?ball", item["caption"], re.I)
            assert balls or counted, item["caption"]


def test_caption_words_follow_the_drawing():
    facts = {"kind": "bounce", "balls": [(0, True), (2, False)]}  # a big red ball, a small blue one
    bg = torch.tensor([0.02, 0.02, 0.12]).numpy()
    text = synthetic.caption(facts, bg, 0)
    assert text == ("A big red ball and a small blue ball bouncing on a dark blue background, each bounce ringing "
                    "C3 and G4.")
    assert synthetic.caption({"kind": "dance", "colour": 5, "bpm": 97}, bg, 3) == \
        "A dark blue stage where a cyan figure dances to 97 beats per minute."
    assert synthetic.background_name(torch.tensor([0.05, 0.06, 0.05]).numpy()) == "grey"
    assert synthetic.background_name(torch.tensor([0.12, 0.11, 0.01]).numpy()) == "olive"


def test_the_test_split_has_phrasings_the_others_never_use():
    held_out = {k: p[-1] for k, p in synthetic.PHRASINGS.items()}
    starts = {k: v.split("{")[0] for k, v in held_out.items()}  # the fixed words each held-out template opens with
    for split in ("train", "val"):
        ds = data.SyntheticDataset(CLIP, split, 60)
        used = {ds.phrasing(i, ds.variants[i % 2]) for i in range(60)}
        assert used == {0, 1, 2, 3}  # every other phrasing, none held out
    test = data.SyntheticDataset(CLIP, "test", 6)
    assert {test.phrasing(i, test.variants[i % 2]) for i in range(6)} == {4}
    assert test[0]["caption"].startswith(starts["bounce"]) and test[1]["caption"].startswith(starts["dance"])


def test_folder_captions_file_and_its_errors(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / data.CAPTIONS).write_text("# path<TAB>caption\nclip.mp4\ta dog barks\na/two.mp4\t rain on a roof \n\n")
    found = data.folder_captions(tmp_path)
    assert found == {"clip.mp4": "a dog barks", "a/two.mp4": "rain on a roof"}
    assert data.caption_of("folder", tmp_path, tmp_path / "a" / "two.mp4", found) == "rain on a roof"
    assert data.caption_of("folder", tmp_path, tmp_path / "other.mp4", found) == ""  # no line: uncaptioned
    (tmp_path / data.CAPTIONS).write_text("clip.mp4 a dog barks\n")
    with pytest.raises(media.BadInput, match=r"captions.tsv:1: no tab"):
        data.folder_captions(tmp_path)


def test_aist_captions_from_genre_codes():
    assert data.aist_caption("gBR_sBM_c01_d04_mBR0_ch01.mp4") == "A break dance to its music."
    assert data.aist_caption("gJB_sFM_c02_d09_mPO3_ch05.mp4") == "A ballet jazz dance to pop music."
    assert data.aist_caption("gLH_sBM_c01_d16_mLH1_ch01.mp4") == "An LA-style hip-hop dance to its music."
    assert data.aist_caption("unrelated_name.mp4") == ""


def test_captions_travel_through_shards(tmp_path):
    data.prepare("synthetic", tmp_path, clip=CLIP, num_clips={"train": 3}, progress=False)
    shards, direct = data.ShardDataset(tmp_path), data.SyntheticDataset(CLIP, "train", 3)
    assert [shards[i]["caption"] for i in range(3)] == [direct[i]["caption"] for i in range(3)]
    batch = torch.utils.data.default_collate([shards[i] for i in range(3)])
    assert isinstance(batch["caption"], list) and len(batch["caption"]) == 3
