"""Support tools (客服工具): find orders by phone, contact or top-up account; bulk compensation coupons."""
