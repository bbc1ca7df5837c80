from app.errors import KamengError, NotFound, ValidationError


class ProductUnavailable(NotFound):
    code = "product_unavailable"


class OutOfStock(KamengError):
    code = "out_of_stock"
    status = 409


class ImportRejected(ValidationError):
    code = "import_rejected"
