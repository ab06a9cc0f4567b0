"""Values as CASDA's Java writes and reads them: number formats and ``String.trim``.

One place for the Java rules the services share: `java_double` / `java_float` are the
cells of TAP and SIA2 results (``String.valueOf``), `java_trim` is how CASDA's parameter
parsers (SIA2's ``ParamProcessor``, SODA's ``PositionParamProcessor``) trim their input.
"""
import math

import numpy as np

__all__ = ["java_double", "java_float", "java_trim"]


def java_trim(text):
    """Java's ``String.trim`` (``StringUtils.trimToEmpty``): strips every character <= space."""
    start, end = 0, len(text)
    while start < end and text[start] <= " ":
        start += 1
    while end > start and text[end - 1] <= " ":
        end -= 1
    return text[start:end]


def _java_from_digits(text, magnitude):
    """Java's ``Double.toString`` layout for the shortest digits in ``text`` (no sign)."""
    if 1e-3 <= magnitude < 1e7:
        if "e" not in text:
            return text if "." in text else text + ".0"
        text = np.format_float_positional(float(text), unique=True, trim="0")
        return text if "." in text else text + ".0"
    if "e" in text:
        mantissa, exponent = text.split("e")
        digits, exponent = mantissa.replace(".", ""), int(exponent) + (len(mantissa.split(".")[0]) - 1)
    else:
        whole, _, fraction = text.partition(".")
        if whole.strip("0"):
            digits, exponent = whole.lstrip("0") + fraction, len(whole.lstrip("0")) - 1
        else:
            digits, exponent = fraction.lstrip("0"), -(len(fraction) - len(fraction.lstrip("0")) + 1)
    digits = digits.strip("0") or "0"
    return f"{digits[0]}.{digits[1:] or '0'}E{exponent}"


def _java_special(value):
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    return None


def java_double(value):
    """``value`` as Java's ``String.valueOf(double)``: ``1.40049E9``, ``0.0``, ``333.16767306594``.

    The digits are Python's shortest round-trip digits, so the text parses back to the
    same double.
    """
    value = float(value)
    special = _java_special(value)
    if special is not None:
        return special
    sign = "-" if value < 0 else ""
    return sign + _java_from_digits(repr(abs(value)), abs(value))


def java_float(value):
    """``value`` as Java's ``String.valueOf(float)`` (shortest digits of the float32)."""
    with np.errstate(over="ignore"):
        single = np.float32(value)  # beyond float32 becomes Infinity, as in Java
    special = _java_special(float(single))
    if special is not None:
        return special
    sign = "-" if single < 0 else ""
    digits = np.format_float_scientific(abs(single), unique=True)
    return sign + _java_from_digits(digits, abs(float(single)))
