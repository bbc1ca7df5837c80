"""Settings refuse unsafe production starts; the money module parses, formats and floors exactly once."""
import pytest

from app import create_app
from app.money import apply_rate, format_bp, format_fen, parse_yuan


def test_production_refuses_development_keys():
    with pytest.raises(RuntimeError, match="SECRET_KEY.*CARD_SECRET_KEY"):
        create_app({"KAMENG_ENV": "production", "SQLALCHEMY_DATABASE_URI": "sqlite://"})


def test_production_refuses_short_keys():
    with pytest.raises(RuntimeError, match="CARD_SECRET_KEY"):
        create_app({"KAMENG_ENV": "production", "SQLALCHEMY_DATABASE_URI": "sqlite://",
                    "SECRET_KEY": "x" * 40, "CARD_SECRET_KEY": "short"})


def test_production_starts_with_real_keys():
    app = create_app({"KAMENG_ENV": "production", "SQLALCHEMY_DATABASE_URI": "sqlite://",
                      "SECRET_KEY": "s" * 40, "CARD_SECRET_KEY": "c" * 40, "FAB_CREATE_DB": False,
                      "FAB_UPDATE_PERMS": False, "PUBLIC_BASE_URL": "https://shop.example.com"})
    assert app.config["KAMENG_ENV"] == "production"


@pytest.mark.parametrize("text, fen", [("12.5", 1250), ("¥12.50", 1250), ("12元", 1200), ("0.01", 1),
                                        ("-3.2", -320), (" 100 ", 10000), ("1,000", None), ("1.234", None),
                                        ("abc", None), ("", None), ("1e3", None)])
def test_parse_yuan(text, fen):
    if fen is None:
        with pytest.raises(ValueError):
            parse_yuan(text)
    else:
        assert parse_yuan(text) == fen


def test_format():
    assert format_fen(123456) == "¥1,234.56"
    assert format_fen(-5) == "-¥0.05"
    assert format_fen(1250, symbol=False) == "12.50"
    assert format_bp(9550) == "95.50%"


def test_apply_rate_floors_once():
    # 999 × 95% × 95% = 901.5975: floored once -> 901; flooring per step would give 900
    assert apply_rate(999, 9500, 9500) == 901
    assert apply_rate(999, 9500) == 949
    assert apply_rate(10000) == 10000
