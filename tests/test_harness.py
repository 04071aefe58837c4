"""The benchmarks' record of where they ran: the CPU named so that two generations are told apart."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))

import harness  # noqa: E402

TWO_PROCESSORS = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
stepping\t: 1

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Processor
"""


def test_the_first_cpu_is_named_with_its_family_and_model():
    assert harness.cpu_name(TWO_PROCESSORS) == "AMD EPYC (cpu family 26, model 2)"
    intel = TWO_PROCESSORS.split("\n\n")[1]
    assert harness.cpu_name(intel) == "Intel(R) Xeon(R) Processor (cpu family 6, model 143)"


def test_a_cpu_without_numbers_or_a_name():
    assert harness.cpu_name("processor\t: 0\nmodel name\t: Some CPU\n") == "Some CPU"
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n"
    assert harness.cpu_name(arm) is None  # host() then names the machine by platform.machine()
    assert "cores of" in harness.host()
