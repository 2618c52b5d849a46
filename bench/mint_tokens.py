"""Mint N bench users with one API token each, and the rooms a scenario needs, in one ORM pass.

Run with Parley's environment (PARLEY_DATA_DIR / DATABASE_URL / SECRET_KEY) from the repo root:
    python -m bench.mint_tokens --users 5000 --rooms r0000,r0001 --out tokens.json
Writes {"tokens": [...], "rooms": {slug: id}} to --out. Much faster than 5,000 runs of
`manage.py create_token`; it stores tokens exactly as parley.services.token_create does.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, required=True)
    ap.add_argument("--rooms", default="", help="comma-separated slugs, or N for r0000..r{N-1}")
    ap.add_argument("--prefix", default="b")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, os.getcwd())
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.db import transaction

    from parley.models import ApiToken, Room
    from parley.selectors import token_hash

    User = get_user_model()
    unusable = make_password(None)
    names = [f"{args.prefix}{i:06d}" for i in range(args.users)]
    raws = ["prl_" + secrets.token_urlsafe(32) for _ in names]
    with transaction.atomic():
        User.objects.bulk_create([User(username=n, password=unusable) for n in names],
                                 batch_size=1000, ignore_conflicts=True)
        users = dict(User.objects.filter(username__in=names).values_list("username", "pk"))
        ApiToken.objects.bulk_create(
            [ApiToken(user_id=users[n], name="bench", key_hash=token_hash(raw), prefix=raw[:10])
             for n, raw in zip(names, raws, strict=True)], batch_size=1000)
        if args.rooms.isdigit():
            slugs = [f"r{i:04d}" for i in range(int(args.rooms))]
        else:
            slugs = [s for s in args.rooms.split(",") if s]
        existing = set(Room.objects.filter(slug__in=slugs).values_list("slug", flat=True))
        Room.objects.bulk_create([Room(slug=s, title=s) for s in slugs if s not in existing], batch_size=1000)
        rooms = dict(Room.objects.filter(slug__in=slugs).values_list("slug", "pk"))
    with open(args.out, "w") as fh:
        json.dump({"tokens": raws, "usernames": names, "rooms": rooms}, fh)


if __name__ == "__main__":
    main()
