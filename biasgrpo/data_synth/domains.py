"""The bias domains every record is mapped into, and the benchmark category -> domain tables.

The eleven core domains follow BBQ's categories (the paper's data covers the same ground); three extra
buckets hold benchmark items that are about bias but fit none of them (StereoSet/BOLD professions,
BOLD political ideologies, HolisticBias "characteristics"/"cultural" descriptors).
"""

from __future__ import annotations

CORE_DOMAINS: tuple[str, ...] = (
    "gender",
    "gender_identity",
    "race_ethnicity",
    "religion",
    "age",
    "disability",
    "nationality",
    "physical_appearance",
    "sexual_orientation",
    "socioeconomic",
    "intersectional",
)
EXTRA_DOMAINS: tuple[str, ...] = ("profession", "political_ideology", "other")
DOMAINS: frozenset[str] = frozenset(CORE_DOMAINS + EXTRA_DOMAINS)

# CrowS-Pairs bias_type -> domain.
CROWS_DOMAINS = {
    "race-color": "race_ethnicity",
    "gender": "gender",
    "socioeconomic": "socioeconomic",
    "nationality": "nationality",
    "religion": "religion",
    "age": "age",
    "sexual-orientation": "sexual_orientation",
    "physical-appearance": "physical_appearance",
    "disability": "disability",
}

# StereoSet bias_type -> domain. StereoSet's "race" targets are mostly countries and ethnic groups.
STEREOSET_DOMAINS = {
    "race": "race_ethnicity",
    "gender": "gender",
    "religion": "religion",
    "profession": "profession",
}

# BBQ category (file name) -> domain. The two cross categories are intersectional by construction.
BBQ_DOMAINS = {
    "Age": "age",
    "Disability_status": "disability",
    "Gender_identity": "gender_identity",
    "Nationality": "nationality",
    "Physical_appearance": "physical_appearance",
    "Race_ethnicity": "race_ethnicity",
    "Race_x_SES": "intersectional",
    "Race_x_gender": "intersectional",
    "Religion": "religion",
    "SES": "socioeconomic",
    "Sexual_orientation": "sexual_orientation",
}

# BOLD prompt file stem -> domain.
BOLD_DOMAINS = {
    "gender": "gender",
    "race": "race_ethnicity",
    "religious_ideology": "religion",
    "political_ideology": "political_ideology",
    "profession": "profession",
}

# HolisticBias axis -> domain (``nonce`` descriptors are made-up control words and are not loaded).
HOLISTICBIAS_DOMAINS = {
    "ability": "disability",
    "age": "age",
    "body_type": "physical_appearance",
    "characteristics": "other",
    "cultural": "other",
    "gender_and_sex": "gender_identity",
    "nationality": "nationality",
    "political_ideologies": "political_ideology",
    "race_ethnicity": "race_ethnicity",
    "religion": "religion",
    "sexual_orientation": "sexual_orientation",
    "socioeconomic_class": "socioeconomic",
}

# Free-text category names seen in Hub datasets (BiasDPO, bias-grpo-data) -> domain.
CATEGORY_ALIASES = {
    "race": "race_ethnicity",
    "ethnicity": "race_ethnicity",
    "race_ethnicity": "race_ethnicity",
    "race-color": "race_ethnicity",
    "gender": "gender",
    "sex": "gender",
    "gender_identity": "gender_identity",
    "lgbtq": "sexual_orientation",
    "sexual_orientation": "sexual_orientation",
    "religion": "religion",
    "age": "age",
    "disability": "disability",
    "disability_status": "disability",
    "nationality": "nationality",
    "physical_appearance": "physical_appearance",
    "appearance": "physical_appearance",
    "socioeconomic": "socioeconomic",
    "socioeconomic_status": "socioeconomic",
    "ses": "socioeconomic",
    "intersectional": "intersectional",
    "profession": "profession",
    "political_ideology": "political_ideology",
    "politics": "political_ideology",
}


def normalise_domain(category: str | None, default: str = "other") -> str:
    """Map a free-text category (e.g. ``"Race/Ethnicity"``, ``"race_x_gender"``) to a domain.

    Names joining two categories (``_x_``, ``+``, ``&``, ``intersection``) map to ``intersectional``;
    unknown names map to ``default``.
    """
    if not category:
        return default
    key = category.strip().lower().replace(" ", "_").replace("/", "_").replace("-", "_")
    if "_x_" in key or "+" in key or "&" in key or "intersection" in key:
        return "intersectional"
    if key in DOMAINS:
        return key
    return CATEGORY_ALIASES.get(key, CATEGORY_ALIASES.get(key.replace("_", "-"), default))


# Keyword cues for rows that carry no category (e.g. BiasDPO). Deliberately small and conservative:
# the domain with the most matching cues wins, a tie between domains is "intersectional", no match "other".
_DOMAIN_KEYWORDS: dict[str, tuple[str, ...]] = {
    "gender": (
        "woman",
        "women",
        "man ",
        " men ",
        "female",
        "male",
        "girl",
        "boy",
        "mother",
        "father",
        "wife",
        "husband",
        "gender",
        "sexis",
        "feminin",
        "masculin",
    ),
    "gender_identity": ("transgender", " trans ", "non-binary", "nonbinary", "cisgender", "gender identity"),
    "race_ethnicity": (
        "black people",
        "white people",
        "asian",
        "hispanic",
        "latino",
        "latina",
        "african",
        "racial",
        "racis",
        "ethnic",
        "native american",
        "arab",
    ),
    "religion": (
        "muslim",
        "christian",
        "jewish",
        "jew ",
        "hindu",
        "buddhis",
        "atheis",
        "religio",
        "islam",
        "church",
        "mosque",
        "sikh",
    ),
    "age": (
        "elderly",
        "old people",
        "older",
        "young people",
        "teenager",
        "millennial",
        "boomer",
        "ageis",
        "retire",
    ),
    "disability": ("disab", "wheelchair", "blind", "deaf", "autis", "mental illness", "handicap"),
    "nationality": (
        "immigrant",
        "foreigner",
        "nationality",
        "mexican",
        "chinese",
        "indian",
        "russian",
        "american",
        "refugee",
    ),
    "physical_appearance": (
        "fat ",
        "obese",
        "overweight",
        "ugly",
        "attractive",
        "short people",
        "tall",
        "appearance",
    ),
    "sexual_orientation": ("gay", "lesbian", "bisexual", "homosexual", "queer", "lgbt", "sexual orientation"),
    "socioeconomic": (
        "poor",
        "rich",
        "wealthy",
        "low-income",
        "low income",
        "homeless",
        "welfare",
        "working class",
        "poverty",
    ),
}


def infer_domain(text: str) -> str:
    """Guess a domain from keywords in ``text`` (used only when a source gives no category)."""
    lowered = f" {text.lower()} "
    counts = {d: sum(c in lowered for c in cues) for d, cues in _DOMAIN_KEYWORDS.items()}
    best = max(counts.values())
    if best == 0:
        return "other"
    winners = [d for d, n in counts.items() if n == best]
    return winners[0] if len(winners) == 1 else "intersectional"
