"""How a person's blind review compares with the truth-played one of ``adaptation.py --review``.

    NAPARI_LGMS_DATA=../shared/datasets python benchmarks/adaptation.py --cases shift --cells 10:120:5 \\
        --review 8 --review-pictures pictures --output run.json
    # a person looks at pictures/<model>-<seed>/NN-A.png and NN-B.png (the image with each mask
    # outlined, in a hidden order) and writes pictures/<model>-<seed>/answers.txt: one line per
    # picture pair, "a", "b" or "s" (same), without opening run.json
    python benchmarks/review_by_eye.py --run run.json --answers pictures [--output eye.json]

Per draw it prints the person's answers (new / old / same, mapped through the hidden order), how
often they named the mask the truth-played reviewer named, and the run's decision three ways: the
check alone, after the truth-played review, after the person's review (the same
:func:`napari_lgms.training.review.reviewed_decision`), with the gain each would have delivered;
then per case the mean and worst delivered gain, the verdicts and their agreement with the real gain.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from adaptation import expected_verdict  # noqa: E402

SHORT = {"a": "A", "b": "B", "s": "same", "same": "same"}


def read_answers(path: Path, count: int) -> list[str]:
    """``count`` answers ("A", "B" or "same") from ``path``: one per line, "#" starts a comment."""
    lines = [line.split("#")[0].strip().lower() for line in path.read_text().splitlines()]
    answers = [line for line in lines if line]
    unknown = [answer for answer in answers if answer not in SHORT]
    if unknown:
        raise SystemExit(f"{path}: answer {unknown[0]!r} not understood; write a, b or s, one per line")
    if len(answers) != count:
        raise SystemExit(f"{path}: {len(answers)} answers for {count} picture pairs; answer every pair")
    return [SHORT[answer] for answer in answers]


def judged(draw: dict, answers: list[str]) -> dict:
    """The draw's review by ``answers``: counts, the decision and what it delivers."""
    from napari_lgms.training.review import ReviewItem, review_verdict, reviewed_decision

    keys = draw["review"]["items"]
    items = [ReviewItem(i, key["name"], None, np.zeros(0), np.zeros(0), key["new_is_first"], key["changed"])
             for i, key in enumerate(keys)]
    verdict = review_verdict(items, answers)
    decision = reviewed_decision(draw["verdict"], verdict)
    gain = draw["candidate_gain"] if decision == "better" else 0.0
    expected = expected_verdict(draw["candidate_gain"])
    return {"new": verdict.new, "old": verdict.old, "same": verdict.same, "decision": decision,
            "gain": gain, "agrees": expected is None or decision == expected}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True,
                        help="the JSON of an adaptation.py --review-pictures run")
    parser.add_argument("--answers", type=Path, required=True,
                        help="the pictures folder, with an answers.txt in each draw's folder")
    parser.add_argument("--output", type=Path, help="also write every draw's three outcomes as JSON")
    options = parser.parse_args(argv)
    run = json.loads(options.run.read_text())
    rows = []
    header = ("case", "seed", "cand.", "check", "truth-played", "by eye")
    print("{:<16} {:>5} {:>6}  {:<17} {:<24} {:<24} same answer".format(*header))
    for cell in run["table"]:
        for draw in cell["draws"]:
            review = draw.get("review")
            if not review or "items" not in review or "pictures" not in review:
                continue
            folder = options.answers / Path(review["pictures"]).name
            eye_answers = read_answers(folder / "answers.txt", len(review["items"]))
            eye, truth = judged(draw, eye_answers), judged(draw, review["answers"])
            matched = sum(a == b for a, b in zip(eye_answers, review["answers"]))
            check = {"decision": draw["verdict"], "gain": draw["gain"], "agrees": draw["agrees"]}
            rows.append({"case": cell["case"], "seed": draw["seed"], "candidate_gain": draw["candidate_gain"],
                         "check": check, "truth_played": truth, "eye": eye, "eye_answers": eye_answers,
                         "matched": matched, "items": len(eye_answers)})
            print(f"{cell['case'][:16]:<16} {draw['seed']:>5} {100 * draw['candidate_gain']:>+6.1f}  "
                  f"{outcome_text(check):<17} {outcome_text(truth):<24} {outcome_text(eye):<24} "
                  f"{matched}/{len(eye_answers)}")
    print()
    print(f"{'case':<16} {'draws':>5}  {'who':<13} {'delivered':>9} {'worst':>6}  better/none/worse  agree")
    for case in dict.fromkeys(row["case"] for row in rows):
        chosen = [row for row in rows if row["case"] == case]
        for who in ("check", "truth_played", "eye"):
            outcomes = [row[who] for row in chosen]
            gains = [100 * o["gain"] for o in outcomes]
            verdicts = "/".join(str(sum(o["decision"] == v for o in outcomes))
                                for v in ("better", "no evidence", "worse"))
            agree = 100 * np.mean([o["agrees"] for o in outcomes])
            print(f"{case[:16]:<16} {len(chosen):>5}  {who:<13} {np.mean(gains):>+9.1f} {min(gains):>+6.1f}  "
                  f"{verdicts:<17}  {agree:>4.0f}%")
    if options.output:
        from napari_lgms._atomic import atomic_write_text

        payload = {"run": str(options.run), "draws": rows}
        atomic_write_text(options.output, json.dumps(payload, indent=1) + "\n")
    return 0


def outcome_text(outcome: dict) -> str:
    """"better +6.2 (7/0/1)": the decision, the gain delivered, and the answers new / old / same."""
    counts = f" ({outcome['new']}/{outcome['old']}/{outcome['same']})" if "new" in outcome else ""
    return f"{outcome['decision']} {100 * outcome['gain']:+.1f}{counts}"


if __name__ == "__main__":
    raise SystemExit(main())
