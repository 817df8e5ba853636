"""A patched module that is unloaded and loaded again while the update is loaded.

Livepatch writes a module target's `.klp.rela.<module>.*` relocations into the update's
own code when that module loads, and the x86 loader refuses to write a relocation whose
place is not zero ("x86/modules: Skipping invalid relocation target, existing value is
nonzero"). Linux 6.3 clears them when the module goes (commit 0c05e7bd2d01, "livepatch,x86:
Clear relocation targets on a module removal"); before it, Debian's 6.1 among them, the
module's second load under the update fails with ENOEXEC and livepatch refuses the module.

For such kernels the generated module clears them itself: `ksplice_clear_relocations(obj)`
runs in the target's post-unpatch callback when livepatch calls it for a module going away
(and when a pre-patch callback refuses a module coming in, whose relocations were just
written), zeroing each place with `text_poke()` under `text_mutex`, as the kernel's own fix
does. Those three are not exported: the C names placeholders that become klp relocations
against vmlinux, like any other reference the loader cannot resolve.
"""

from __future__ import annotations

from pathlib import Path

#: What the generated C needs from vmlinux: (name, the C declaration with `{}` for the
#: placeholder's name). Called directly, never through a pointer: IBT kernels seal
#: functions whose address is never taken.
KERNEL_SYMBOLS: tuple[tuple[str, str], ...] = (
    ("text_poke", "extern void *{}(void *addr, const void *opcode, size_t len) "
                  "__attribute__((weak));"),
    ("text_poke_sync", "extern void {}(void) __attribute__((weak));"),
    ("text_mutex", "extern struct mutex {} __attribute__((weak));"),
)


def kernel_clears_relocations(tree: Path) -> bool:
    """Whether the kernel the update is built against clears a going module's livepatch
    relocations itself (then clearing them again would make it warn)."""
    try:
        core = (tree / "kernel" / "livepatch" / "core.c").read_text(errors="replace")
    except OSError:
        return False
    return "klp_clear_object_relocs" in core


def clear_source(placeholders: dict[str, str]) -> list[str]:
    """`ksplice_clear_relocations()`, with `placeholders` naming the C symbol that stands
    for each of KERNEL_SYMBOLS."""
    poke, sync, mutex = (placeholders[name] for name, _ in KERNEL_SYMBOLS)
    return [
        "#include <linux/elf.h>",
        "#include <linux/mutex.h>",
        "",
        *(decl.format(placeholders[name]) for name, decl in KERNEL_SYMBOLS),
        "",
        "/* Zero the places of obj's livepatch relocations in this module while obj is going",
        " * (or refused on its way in), so that its next load can write them again: Linux",
        " * before 6.3 leaves them written and its loader then refuses them. */",
        "static void ksplice_clear_relocations(struct klp_object *obj)",
        "{",
        "\tstatic const u64 zero;",
        "\tstruct klp_modinfo *info = THIS_MODULE->klp_info;",
        "\tchar prefix[MODULE_NAME_LEN + 16];",
        "\tunsigned int s;",
        "",
        "\tif (!obj->mod || (obj->mod->state != MODULE_STATE_GOING &&",
        "\t\t\t  obj->mod->state != MODULE_STATE_COMING))",
        "\t\treturn;",
        '\tsnprintf(prefix, sizeof(prefix), ".klp.rela.%s.", obj->name);',
        f"\tmutex_lock(&{mutex});",
        "\tfor (s = 1; s < info->hdr.e_shnum; s++) {",
        "\t\tElf_Shdr *sec = &info->sechdrs[s];",
        "\t\tElf_Rela *rel = (Elf_Rela *)sec->sh_addr;",
        "\t\tunsigned long i;",
        "",
        "\t\tif (!(sec->sh_flags & SHF_RELA_LIVEPATCH) ||",
        "\t\t    strncmp(info->secstrings + sec->sh_name, prefix, strlen(prefix)))",
        "\t\t\tcontinue;",
        "\t\tfor (i = 0; i < sec->sh_size / sizeof(*rel); i++) {",
        "\t\t\tvoid *loc = (void *)info->sechdrs[sec->sh_info].sh_addr + rel[i].r_offset;",
        "",
        "\t\t\tswitch (ELF64_R_TYPE(rel[i].r_info)) {",
        "\t\t\tcase R_X86_64_64:",
        "\t\t\tcase R_X86_64_PC64:",
        f"\t\t\t\t{poke}(loc, &zero, 8);",
        "\t\t\t\tbreak;",
        "\t\t\tcase R_X86_64_32:",
        "\t\t\tcase R_X86_64_32S:",
        "\t\t\tcase R_X86_64_PC32:",
        "\t\t\tcase R_X86_64_PLT32:",
        f"\t\t\t\t{poke}(loc, &zero, 4);",
        "\t\t\t\tbreak;",
        "\t\t\t}",
        "\t\t}",
        "\t}",
        f"\t{sync}();",
        f"\tmutex_unlock(&{mutex});",
        "}",
        "",
    ]
