"""Settings shared with ``astroquery.casda``: its configuration and its class attributes.

A user migrating from ``astroquery.casda`` has two ways of changing its behaviour, and
both keep working here:

* a ``[casda]`` section in ``astroquery.cfg`` (``server``, ``timeout``, ``poll_interval``,
  ``soda_base_url``, ``login_url``, ``username``): `effective` reads it whenever our own
  configuration (``astroquery_casda_ext.cfg`` or ``conf.set_temp``) leaves the same item at
  its default;
* the class attributes ``URL``, ``TIMEOUT`` and ``POLL_INTERVAL``, set on the class
  (``Casda.__class__.POLL_INTERVAL = 5``) or on one instance (``Casda.POLL_INTERVAL = 5``):
  `ClassSetting` stores them and the façade reads them at each call.  ``del`` on the
  instance (or class) goes back to the configuration.
"""
from .config import Conf, conf

__all__ = ["effective", "ClassSetting", "SettingsMeta", "SHARED_ITEMS"]

#: Items with the same name and meaning in ``astroquery.casda.conf``.
SHARED_ITEMS = ("server", "timeout", "poll_interval", "soda_base_url", "login_url", "username")


def _first(value):
    # astroquery.casda keeps its URLs as one-element lists
    return value[0] if isinstance(value, (list, tuple)) and value else value


def _astroquery_value(name):
    """astroquery.casda's value of ``name`` when the user changed it from astroquery's default."""
    try:
        from astroquery.casda import conf as astroquery_conf
    except ImportError:     # astroquery without its casda module: nothing to inherit
        return None
    except (TypeError, ValueError):
        # astroquery.casda declares `server` as a list of allowed values, so a server of the
        # user's own in astroquery.cfg makes astroquery.casda itself fail to import: read the
        # user's text from the file instead of letting that fail every command
        return _raw_astroquery_value(name)
    item = getattr(type(astroquery_conf), name)
    value = getattr(astroquery_conf, name)
    return None if _first(value) == _first(item.defaultvalue) else _first(value)


def _raw_astroquery_value(name):
    """``name`` as written in the ``[casda]`` section of the user's astroquery.cfg (None if absent)."""
    from astropy.config import get_config
    try:
        section = get_config("astroquery.casda", rootname="astroquery")
        value = section.get(name)
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return _first(value) if value not in (None, "") else None


def effective(name):
    """The value in force for configuration item ``name``.

    Our own item wins once it differs from its default; otherwise a shared item takes the
    value of the user's ``[casda]`` section in ``astroquery.cfg``; otherwise our default.
    """
    value = getattr(conf, name)
    if name in SHARED_ITEMS and _first(value) == _first(getattr(Conf, name).defaultvalue):
        inherited = _astroquery_value(name)
        if inherited is not None:
            return inherited
    return _first(value)


class ClassSetting:
    """An ``astroquery.casda`` class attribute that reads and writes a real setting.

    Reading gives the instance's own value, else the class's, else ``default()`` (the
    configuration, read now).  Assigning on an instance changes that instance only;
    assigning on the class (routed here by `SettingsMeta`) changes every instance
    that has no value of its own.

    Parameters
    ----------
    default : callable
        ``default(instance_or_None)``: the value when nothing was assigned.
    check : callable
        Converts and validates an assigned value (raising a clear error).
    """

    def __init__(self, default, check, doc=""):
        self.default = default
        self.check = check
        self.__doc__ = doc

    def __set_name__(self, owner, name):
        self.name = name
        self.key = "_setting_" + name

    def __get__(self, instance, owner=None):
        if instance is not None and self.key in instance.__dict__:
            return instance.__dict__[self.key]
        for klass in (owner or type(instance)).__mro__:
            if self.key in klass.__dict__:
                return klass.__dict__[self.key]
        return self.default(instance)

    def __set__(self, instance, value):
        instance.__dict__[self.key] = self.check(value)

    def __delete__(self, instance):
        instance.__dict__.pop(self.key, None)

    def set_on_class(self, owner, value):
        type.__setattr__(owner, self.key, self.check(value))

    def delete_on_class(self, owner):
        if self.key in owner.__dict__:
            type.__delattr__(owner, self.key)


class SettingsMeta(type):
    """Routes ``Class.ATTR = value`` to the `ClassSetting` instead of replacing it (a mixin
    for the façade's metaclass: a plain descriptor would be overwritten by a class assignment)."""

    def _class_setting(cls, name):
        for klass in cls.__mro__:
            found = klass.__dict__.get(name)
            if isinstance(found, ClassSetting):
                return found
        return None

    def __setattr__(cls, name, value):
        setting = cls._class_setting(name)
        if setting is None:
            super().__setattr__(name, value)
        else:
            setting.set_on_class(cls, value)

    def __delattr__(cls, name):
        setting = cls._class_setting(name)
        if setting is None:
            super().__delattr__(name)
        else:
            setting.delete_on_class(cls)
