"""NT device path -> DOS path mapping (pure, over an injected device map)."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sensor.enrich.devices import DeviceMapper, nt_to_dos

MAP = {
    "\\Device\\HarddiskVolume1": "D:",
    "\\Device\\HarddiskVolume3": "C:",
    "\\Device\\HarddiskVolume12": "E:",
}


def test_volume_paths():
    assert nt_to_dos("\\Device\\HarddiskVolume3\\Windows\\System32\\cmd.exe", MAP) == "C:\\Windows\\System32\\cmd.exe"
    assert nt_to_dos("\\device\\harddiskvolume3\\x.exe", MAP) == "C:\\x.exe"   # case-insensitive device
    assert nt_to_dos("\\Device\\HarddiskVolume3", MAP) == "C:\\"


def test_whole_component_match_only():
    assert nt_to_dos("\\Device\\HarddiskVolume12\\a.exe", MAP) == "E:\\a.exe"
    assert nt_to_dos("\\Device\\HarddiskVolume1\\a.exe", MAP) == "D:\\a.exe"
    # Volume13 is unknown: it must not be taken for Volume1 (prefix bug).
    assert nt_to_dos("\\Device\\HarddiskVolume13\\a.exe", MAP) == "\\Device\\HarddiskVolume13\\a.exe"
    assert nt_to_dos("\\Device\\HarddiskVolume1x\\a.exe", {"\\Device\\HarddiskVolume1": "D:"}) \
        == "\\Device\\HarddiskVolume1x\\a.exe"


def test_unc_systemroot_and_dos_device_prefixes():
    assert nt_to_dos("\\Device\\Mup\\srv\\share\\tool.exe", MAP) == "\\\\srv\\share\\tool.exe"
    assert nt_to_dos("\\Device\\LanmanRedirector\\srv\\s\\t.exe", MAP) == "\\\\srv\\s\\t.exe"
    assert nt_to_dos("\\??\\UNC\\srv\\share\\t.exe", MAP) == "\\\\srv\\share\\t.exe"
    assert nt_to_dos("\\??\\C:\\Windows\\x.exe", MAP) == "C:\\Windows\\x.exe"
    assert nt_to_dos("\\\\?\\C:\\x.exe", MAP) == "C:\\x.exe"
    assert nt_to_dos("\\SystemRoot\\System32\\smss.exe", MAP) == "C:\\Windows\\System32\\smss.exe"
    assert nt_to_dos("\\SYSTEMROOT\\System32\\smss.exe", MAP, "D:\\WINNT") == "D:\\WINNT\\System32\\smss.exe"
    assert nt_to_dos("\\SystemRootX\\a", MAP) == "\\SystemRootX\\a"


def test_dos_paths_and_empty_pass_through():
    assert nt_to_dos("C:\\Windows\\x.exe", MAP) == "C:\\Windows\\x.exe"
    assert nt_to_dos("", MAP) == ""
    assert nt_to_dos(None, MAP) is None
    assert nt_to_dos("\\Device\\HarddiskVolumeShadowCopy2\\x.exe", MAP) == "\\Device\\HarddiskVolumeShadowCopy2\\x.exe"


@given(st.integers(1, 40), st.integers(1, 40), st.text(st.characters(blacklist_characters="\\\x00"), max_size=12))
def test_property_never_matches_another_volume(n, m, name):
    devices = {f"\\Device\\HarddiskVolume{n}": "Q:"}
    path = f"\\Device\\HarddiskVolume{m}\\{name}"
    out = nt_to_dos(path, devices)
    if n == m:
        assert out == "Q:\\" + name
    else:
        assert out == path


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_mapper_refreshes_on_miss_with_cooldown():
    loads = []
    current = {"\\Device\\HarddiskVolume3": "C:"}

    def loader():
        loads.append(1)
        return dict(current)

    clock = Clock()
    mapper = DeviceMapper(loader, cooldown=5.0, clock=clock)
    assert len(loads) == 1
    assert mapper("\\Device\\HarddiskVolume3\\a.exe") == "C:\\a.exe"
    # A USB stick appears as Volume9 after start: the first miss reloads the map... but only
    # after the cooldown since the last load.
    current["\\Device\\HarddiskVolume9"] = "F:"
    assert mapper("\\Device\\HarddiskVolume9\\b.exe") == "\\Device\\HarddiskVolume9\\b.exe"
    assert len(loads) == 1 and mapper.misses == 1
    clock.t = 6.0
    assert mapper("\\Device\\HarddiskVolume9\\b.exe") == "F:\\b.exe"
    assert len(loads) == 2
    # UNC and DOS paths never trigger a reload.
    clock.t = 20.0
    mapper("\\Device\\Mup\\s\\x.exe")
    mapper("C:\\x.exe")
    assert len(loads) == 2


def test_mapper_keeps_old_map_when_loader_fails():
    state = {"fail": False}

    def loader():
        if state["fail"]:
            raise OSError("QueryDosDevice failed")
        return {"\\Device\\HarddiskVolume3": "C:"}

    clock = Clock()
    mapper = DeviceMapper(loader, cooldown=0.0, clock=clock)
    state["fail"] = True
    assert mapper("\\Device\\HarddiskVolume7\\x") == "\\Device\\HarddiskVolume7\\x"
    assert mapper("\\Device\\HarddiskVolume3\\x") == "C:\\x"
    assert mapper.stats()["load_errors"] >= 1


def test_mapped_drive_redirector_form():
    assert nt_to_dos("\\Device\\LanmanRedirector\\;Z:00000000000a1b2c\\srv\\share\\t.exe", MAP) \
        == "\\\\srv\\share\\t.exe"
    assert nt_to_dos("\\Device\\Mup\\;LanmanRedirector\\;Z:0001\\srv\\s\\t.exe", MAP) == "\\\\srv\\s\\t.exe"


def test_mapper_remembers_translations_until_the_map_is_reloaded():
    current = {"\\Device\\HarddiskVolume3": "C:"}
    now = [0.0]
    mapper = DeviceMapper(lambda: dict(current), cooldown=5.0, clock=lambda: now[0])
    path = "\\Device\\HarddiskVolume3\\Windows\\x.exe"
    assert mapper(path) == "C:\\Windows\\x.exe"
    mapper.devices = {}                          # a remembered path no longer reads the map ...
    assert mapper(path) == "C:\\Windows\\x.exe"
    current["\\Device\\HarddiskVolume3"] = "E:"
    now[0] = 10.0
    assert mapper.refresh()                      # ... until the map is loaded again
    assert mapper(path) == "E:\\Windows\\x.exe"


def test_mapper_does_not_remember_a_miss_so_a_new_volume_is_still_found():
    maps = {"\\Device\\HarddiskVolume3": "C:"}
    now = [0.0]
    mapper = DeviceMapper(lambda: dict(maps), cooldown=5.0, clock=lambda: now[0])
    path = "\\Device\\HarddiskVolume9\\tool.exe"
    assert mapper(path) == path and mapper.misses == 1
    maps["\\Device\\HarddiskVolume9"] = "F:"     # the volume is mounted later
    now[0] = 10.0
    assert mapper(path) == "F:\\tool.exe"


def test_mapper_memory_is_bounded_for_hostile_paths():
    from sensor.enrich import devices
    mapper = DeviceMapper(devices={"\\Device\\HarddiskVolume3": "C:"})
    for i in range(devices.CACHE_ENTRIES * 3):
        assert mapper(f"\\Device\\HarddiskVolume3\\p{i}.exe") == f"C:\\p{i}.exe"
    assert len(mapper._cache) <= devices.CACHE_ENTRIES
    long = "\\Device\\HarddiskVolume3\\" + "a" * 32_000
    assert mapper(long) == "C:\\" + "a" * 32_000 and long not in mapper._cache
