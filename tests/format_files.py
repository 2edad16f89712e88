"""Real-shaped files of the hospital formats, written from a known signal (for reader tests and the
bad-input corpus): HL7 aECG XML, Philips Sierra XML (XLI-compressed, with our own LZW/XLI encoder,
and uncompressed), EDF/EDF+/BDF through edfio.

Every writer takes ``signal`` in mV, shape (12, n), standard lead order, and returns the path.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

STANDARD = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
_MDC = {"aVR": "AVR", "aVL": "AVL", "aVF": "AVF"}


# ---------------------------------------------------------------------------------------------
# HL7 aECG
# ---------------------------------------------------------------------------------------------
def hl7_sequence(code: str, digits: np.ndarray, scale_uv: float = 2.5, origin_uv: float = 0.0) -> str:
    return f"""
            <component>
              <sequence>
                <code code="{code}" codeSystem="2.16.840.1.113883.6.24" codeSystemName="MDC"/>
                <value xsi:type="SLIST_PQ">
                  <origin value="{origin_uv:g}" unit="uV"/>
                  <scale value="{scale_uv:g}" unit="uV"/>
                  <digits>{" ".join(str(int(d)) for d in digits)}</digits>
                </value>
              </sequence>
            </component>"""


def hl7_xml(
    signal: np.ndarray,
    fs: float = 500.0,
    *,
    leads: list[str] | None = None,
    scale_uv: float = 2.5,
    extra: dict[str, np.ndarray] | None = None,
    increment: str | None = None,
    sequences: str | None = None,
    median_beat: bool = True,
) -> str:
    """An HL7 v3 AnnotatedECG document: one RHYTHM series (time + one sequence per lead), and a
    derived median-beat series that the reader must not pick."""
    leads = leads or STANDARD
    body = "".join(
        hl7_sequence(
            f"MDC_ECG_LEAD_{_MDC.get(name, name)}", np.round(signal[STANDARD.index(name)] * 1000 / scale_uv), scale_uv
        )
        for name in leads
    )
    for name, values in (extra or {}).items():
        body += hl7_sequence(f"MDC_ECG_LEAD_{name}", np.round(values * 1000 / scale_uv), scale_uv)
    if sequences is not None:
        body = sequences
    inc = increment if increment is not None else f'<increment value="{1 / fs:g}" unit="s"/>'
    derived = ""
    if median_beat:
        beat = "".join(hl7_sequence(f"MDC_ECG_LEAD_{_MDC.get(n, n)}", np.zeros(600), 5.0) for n in STANDARD)
        derived = f"""
      <derivation><derivedSeries>
        <code code="REPRESENTATIVE_BEAT" codeSystem="2.16.840.1.113883.5.4"/>
        <component><sequenceSet>
          <component><sequence><code code="TIME_RELATIVE" codeSystem="2.16.840.1.113883.5.4"/>
            <value xsi:type="GLIST_PQ"><head value="0" unit="s"/><increment value="0.001" unit="s"/></value>
          </sequence></component>{beat}
        </sequenceSet></component>
      </derivedSeries></derivation>"""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<AnnotatedECG xmlns="urn:hl7-org:v3" xmlns:voc="urn:hl7-org:v3/voc"
              xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" type="Observation">
  <id root="61d1a24f-b47e-41aa-ae95-f8ac302f4eeb"/>
  <code code="93000" codeSystem="2.16.840.1.113883.6.12" codeSystemName="CPT-4"/>
  <effectiveTime><low value="20021122091000.000"/><high value="20021122091010.000"/></effectiveTime>
  <componentOf><timepointEvent><componentOf><subjectAssignment><subject><trialSubject>
    <id extension="SUBJ-001" root="1.3.6.1.4.1.57"/>
    <subjectDemographicPerson><administrativeGenderCode code="F" codeSystem="2.16.840.1.113883.5.1"/>
      <birthTime value="19600101"/></subjectDemographicPerson>
  </trialSubject></subject></subjectAssignment></componentOf></timepointEvent></componentOf>
  <component>
    <series>
      <id root="2.16.840.1.113883.3.37.3.1"/>
      <code code="RHYTHM" codeSystem="2.16.840.1.113883.5.4"/>
      <effectiveTime><low value="20021122091000.000"/><high value="20021122091010.000"/></effectiveTime>{derived}
      <component>
        <sequenceSet>
          <component>
            <sequence>
              <code code="TIME_ABSOLUTE" codeSystem="2.16.840.1.113883.5.4"/>
              <value xsi:type="GLIST_TS"><head value="20021122091000.000"/>{inc}</value>
            </sequence>
          </component>{body}
        </sequenceSet>
      </component>
    </series>
  </component>
</AnnotatedECG>
"""


def write_hl7(path: Path, signal: np.ndarray, fs: float = 500.0, encoding: str = "utf-8", **kw: object) -> Path:
    text = hl7_xml(signal, fs, **kw)  # type: ignore[arg-type]
    if encoding != "utf-8":
        text = text.replace('encoding="UTF-8"', f'encoding="{encoding.upper()}"')
    path.write_bytes(text.encode(encoding))
    return path


# ---------------------------------------------------------------------------------------------
# Philips Sierra XML with XLI compression
# ---------------------------------------------------------------------------------------------
def lzw_encode(data: bytes, bits: int = 10) -> bytes:
    """LZW with ``bits``-bit codes, MSB-first, dictionary frozen when full (the XLI variant)."""
    max_code = (1 << bits) - 2
    table = {bytes([i]): i for i in range(256)}
    next_code = 256
    codes: list[int] = []
    current = b""
    for byte in data:
        candidate = current + bytes([byte])
        if candidate in table:
            current = candidate
            continue
        codes.append(table[current])
        if next_code <= max_code:
            table[candidate] = next_code
            next_code += 1
        current = bytes([byte])
    if current:
        codes.append(table[current])
    out = bytearray()
    buffer = 0
    count = 0
    for code in codes:
        buffer = (buffer << bits) | code
        count += bits
        while count >= 8:
            count -= 8
            out.append((buffer >> count) & 0xFF)
    if count:
        out.append((buffer << (8 - count)) & 0xFF)
    return bytes(out)


def xli_chunk(values: np.ndarray) -> bytes:
    """One lead, XLI-encoded: the inverse of sierraecg's second-difference predictor."""
    out = np.asarray(values, dtype=np.int64)
    n = out.size
    deltas = np.zeros(n, dtype=np.int64)
    deltas[:2] = out[:2]
    residual = [2 * out[i - 1] - out[i - 2] - out[i] for i in range(2, n)]  # L_i
    start = residual[0]
    for i in range(3, n):
        deltas[i - 1] = residual[i - 2] + 64
    deltas[n - 1] = 64
    d16 = deltas.astype(np.int16).view(np.uint16)
    payload = bytes((d16 >> 8).astype(np.uint8)) + bytes((d16 & 0xFF).astype(np.uint8))
    compressed = lzw_encode(payload)
    header = (
        len(compressed).to_bytes(4, "little", signed=True) + b"\x00\x00" + int(start).to_bytes(2, "little", signed=True)
    )
    return header + compressed


def philips_stored(counts: np.ndarray) -> list[np.ndarray]:
    """What a PageWriter stores: III, aVR, aVL, aVF as residuals of the values derived from I, II."""
    i, ii, iii, avr, avl, avf = (counts[k].astype(np.int64) for k in range(6))
    stored = [
        i,
        ii,
        ii - i - iii,
        -avr - np.floor_divide(i + ii, 2),
        np.floor_divide(i - iii, 2) - avl,
        np.floor_divide(ii + iii, 2) - avf,
    ]
    return stored + [counts[k].astype(np.int64) for k in range(6, 12)]


def philips_xml(
    signal: np.ndarray,
    fs: float = 500.0,
    *,
    resolution_uv: float = 5.0,
    compression: str = "XLI",
    labels: list[str] | None = None,
    version: str = "1.04",
    waveform: str | None = None,
) -> tuple[str, np.ndarray]:
    """A Philips 1.04 document and the integer counts it holds, shape (12, n)."""
    counts = np.round(signal * 1000 / resolution_uv).astype(np.int64)
    # keep the limb leads exactly consistent in counts (a cart computes III, aVR... from I and II)
    counts[2] = counts[1] - counts[0]
    counts[3] = -np.floor_divide(counts[0] + counts[1], 2)
    counts[4] = counts[0] - np.floor_divide(counts[1], 2)
    counts[5] = counts[1] - np.floor_divide(counts[0], 2)
    labels = labels or STANDARD
    if waveform is None:
        if compression == "XLI":
            blob = b"".join(xli_chunk(lead) for lead in philips_stored(counts))
            attrs = 'dataencoding="Base64" compressflag="True" compressmethod="XLI"'
        else:
            blob = counts.astype("<i2").tobytes()
            attrs = 'dataencoding="Base64" compressflag="False"'
        text = base64.b64encode(blob).decode()
        waveform = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    else:
        attrs = 'dataencoding="Base64" compressflag="True" compressmethod="XLI"'
    duration = int(round(counts.shape[1] * 1000 / fs))
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<restingecgdata xmlns="http://www3.medical.philips.com" status="Confirmed">
  <documentinfo><documenttype>PhilipsECG</documenttype><documentversion>{version}</documentversion></documentinfo>
  <dataacquisition date="2020-03-01" time="10:15:30">
    <machine machineid="CART-12">PageWriter TC70</machine>
    <signalcharacteristics>
      <samplingrate>{fs:g}</samplingrate>
      <resolution>{resolution_uv:g}</resolution>
      <hipass>0.05</hipass><lowpass>150</lowpass>
      <acquisitiontype>10-WIRE</acquisitiontype>
      <bitspersample>16</bitspersample><signaloffset>0</signaloffset><signalsigned>True</signalsigned>
      <numberchannelsallocated>12</numberchannelsallocated><numberchannelsvalid>12</numberchannelsvalid>
    </signalcharacteristics>
  </dataacquisition>
  <patient><generalpatientdata><patientid>P-1</patientid><age><years>64</years></age><sex>Male</sex>
  </generalpatientdata></patient>
  <interpretations><interpretation><statement><leftstatement>Sinus rhythm</leftstatement></statement>
  </interpretation></interpretations>
  <waveforms>
    <parsedwaveforms {attrs} numberofleads="{len(labels)}" leadlabels="{" ".join(labels)}"
        durationperchannel="{duration}" samplespersecond="{fs:g}"
        resolution="{resolution_uv:g}">{waveform}</parsedwaveforms>
  </waveforms>
</restingecgdata>
"""
    return xml, counts


def write_philips(path: Path, signal: np.ndarray, fs: float = 500.0, **kw: object) -> tuple[Path, np.ndarray]:
    xml, counts = philips_xml(signal, fs, **kw)  # type: ignore[arg-type]
    path.write_text(xml)
    return path, counts


# ---------------------------------------------------------------------------------------------
# EDF / BDF
# ---------------------------------------------------------------------------------------------
def write_edf(
    path: Path,
    signal: np.ndarray,
    fs: float = 500.0,
    *,
    labels: list[str] | None = None,
    unit: str = "uV",
    extra: dict[str, np.ndarray] | None = None,
    bdf: bool = False,
) -> Path:
    """EDF (or BDF) with one 'ECG <lead>' signal per lead in ``unit`` (plus ``extra`` non-ECG signals)."""
    import edfio

    factor = {"uV": 1000.0, "mV": 1.0}[unit]
    labels = labels or [f"ECG {name}" for name in STANDARD]
    cls = edfio.BdfSignal if bdf else edfio.EdfSignal
    digital = (-8388608, 8388607) if bdf else (-32768, 32767)
    signals = [
        cls(
            row * factor,
            fs,
            label=label,
            physical_dimension=unit,
            physical_range=(-10000.0, 10000.0),
            digital_range=digital,
        )
        for row, label in zip(signal, labels)
    ]
    for label, values in (extra or {}).items():
        signals.append(
            cls(values, fs, label=label, physical_dimension="%", physical_range=(-100.0, 100.0), digital_range=digital)
        )
    record = (edfio.Bdf if bdf else edfio.Edf)(signals)
    record.write(path)
    return path
