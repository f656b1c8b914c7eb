"""A small demo catalogue and a few customers, loaded by ``make run`` when the log is empty."""

from __future__ import annotations

from .commands import AddProduct, RegisterCustomer

__all__ = ["seed_commands"]


def seed_commands() -> list[object]:
    """Return the commands that build the demo shop: 12 products in 4 categories, 3 customers.

    They are accepted in this order by `soloist_shop.decider.decide` on an empty shop. One product
    (``KIT-003``) starts with no stock, so ``in_stock`` searches show a difference.
    """
    return [
        # -- books ---------------------------------------------------------------------------
        AddProduct(
            sku="BK-001",
            name="The Art of Computer Programming, Vol. 1",
            category="books",
            price_cents=7999,
            stock=12,
            description="Knuth's classic on fundamental algorithms: information structures and analysis.",
        ),
        AddProduct(
            sku="BK-002",
            name="Structure and Interpretation of Computer Programs",
            category="books",
            price_cents=5500,
            stock=20,
            description="Abelson and Sussman on abstraction, recursion and interpreters, in Scheme.",
        ),
        AddProduct(
            sku="BK-003",
            name="Designing Data-Intensive Applications",
            category="books",
            price_cents=4599,
            stock=35,
            description="Replication, partitioning, event logs and stream processing explained.",
        ),
        # -- kitchen -------------------------------------------------------------------------
        AddProduct(
            sku="KIT-001",
            name="Cast Iron Skillet 26 cm",
            category="kitchen",
            price_cents=3495,
            stock=40,
            description="Pre-seasoned cast iron pan for searing, baking and frying; oven safe.",
        ),
        AddProduct(
            sku="KIT-002",
            name="Pour-Over Coffee Kettle",
            category="kitchen",
            price_cents=4200,
            stock=15,
            description="Stainless steel gooseneck kettle, 1 litre, with a built-in thermometer.",
        ),
        AddProduct(
            sku="KIT-003",
            name="Chef's Knife 20 cm",
            category="kitchen",
            price_cents=8900,
            stock=0,
            description="Forged stainless steel chef knife with a full tang and a riveted handle.",
        ),
        # -- garden --------------------------------------------------------------------------
        AddProduct(
            sku="GRD-001",
            name="Stainless Steel Hand Trowel",
            category="garden",
            price_cents=1299,
            stock=60,
            description="Rust-proof trowel with depth markings and an ash wood handle.",
        ),
        AddProduct(
            sku="GRD-002",
            name="Expandable Garden Hose 15 m",
            category="garden",
            price_cents=2999,
            stock=25,
            description="Lightweight hose that expands under pressure; brass fittings, 8 spray patterns.",
        ),
        AddProduct(
            sku="GRD-003",
            name="Tomato Seed Collection",
            category="garden",
            price_cents=850,
            stock=100,
            description="Five heirloom tomato varieties: cherry, beefsteak, plum, green zebra, brandywine.",
        ),
        # -- electronics ---------------------------------------------------------------------
        AddProduct(
            sku="EL-001",
            name="Mechanical Keyboard",
            category="electronics",
            price_cents=11900,
            stock=18,
            description="Tenkeyless keyboard with tactile switches, USB-C cable and PBT keycaps.",
        ),
        AddProduct(
            sku="EL-002",
            name="Noise-Cancelling Headphones",
            category="electronics",
            price_cents=24900,
            stock=9,
            description="Over-ear wireless headphones with 30 hours of battery and USB-C charging.",
        ),
        AddProduct(
            sku="EL-003",
            name="USB-C Charger 65 W",
            category="electronics",
            price_cents=3900,
            stock=50,
            description="Compact gallium nitride charger with two USB-C ports and one USB-A port.",
        ),
        # -- customers -----------------------------------------------------------------------
        RegisterCustomer(customer_id="c-ada", name="Ada Lovelace", email="ada@example.com"),
        RegisterCustomer(customer_id="c-grace", name="Grace Hopper", email="grace@example.com"),
        RegisterCustomer(customer_id="c-alan", name="Alan Turing", email="alan@example.com"),
    ]
