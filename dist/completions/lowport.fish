# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_lowport_global_optspecs
    string join \n c/config= m/map= v/verbose q/quiet h/help V/version
end

function __fish_lowport_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_lowport_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_lowport_using_subcommand
    set -l cmd (__fish_lowport_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c lowport -n "__fish_lowport_needs_command" -s c -l config -d 'YAML configuration file. Default: /etc/lowport/lowport.yaml, unless -m is given (then no file is read)' -r -F
complete -c lowport -n "__fish_lowport_needs_command" -s m -l map -d 'Add a mapping, after the file\'s (repeatable): 80:8080, 0.0.0.0:80:127.0.0.1:8080, [::]:443:[::1]:8443 (`lowport --help` lists the forms)' -r
complete -c lowport -n "__fish_lowport_needs_command" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides'
complete -c lowport -n "__fish_lowport_needs_command" -s q -l quiet -d 'Only errors'
complete -c lowport -n "__fish_lowport_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c lowport -n "__fish_lowport_needs_command" -s V -l version -d 'Print version'
complete -c lowport -n "__fish_lowport_needs_command" -f -a "rules" -d 'Install, remove or show kernel NAT rules (one shot), or keep them in force (`rules watch`)'
complete -c lowport -n "__fish_lowport_needs_command" -f -a "proxy" -d 'Relay TCP connections in the foreground (splice(2), zero-copy): binds the listen ports, drops every privilege, then serves. SIGTERM/SIGINT drain and exit, SIGHUP reloads the configuration, SIGUSR1 logs counters'
complete -c lowport -n "__fish_lowport_needs_command" -f -a "check" -d 'Validate the configuration, then diagnose this host: is something listening on each target (and as whom), are the rules installed and unchanged, do sysctls, input firewalls or other NAT tables get in the way, can the proxy bind its ports. One line per finding (✓ ✗ !), a fix for each problem, and the simplest way to serve the mappings here. Exit 0: all in place; 1: something is missing; 2: bad config'
complete -c lowport -n "__fish_lowport_needs_command" -f -a "completions" -d 'Print a shell completion script (for packagers; see dist/completions)'
complete -c lowport -n "__fish_lowport_needs_command" -f -a "man" -d 'Print the man page, roff (for packagers; see dist/man)'
complete -c lowport -n "__fish_lowport_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and not __fish_seen_subcommand_from apply remove watch show help" -s c -l config -d 'YAML configuration file. Default: /etc/lowport/lowport.yaml, unless -m is given (then no file is read)' -r -F
complete -c lowport -n "__fish_lowport_using_subcommand rules; and not __fish_seen_subcommand_from apply remove watch show help" -s m -l map -d 'Add a mapping, after the file\'s (repeatable): 80:8080, 0.0.0.0:80:127.0.0.1:8080, [::]:443:[::1]:8443 (`lowport --help` lists the forms)' -r
complete -c lowport -n "__fish_lowport_using_subcommand rules; and not __fish_seen_subcommand_from apply remove watch show help" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and not __fish_seen_subcommand_from apply remove watch show help" -s q -l quiet -d 'Only errors'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and not __fish_seen_subcommand_from apply remove watch show help" -s h -l help -d 'Print help'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and not __fish_seen_subcommand_from apply remove watch show help" -f -a "apply" -d 'Replace lowport\'s rules with the configured mappings, atomically'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and not __fish_seen_subcommand_from apply remove watch show help" -f -a "remove" -d 'Remove lowport\'s rules and put back the sysctls it changed. Removing nothing succeeds'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and not __fish_seen_subcommand_from apply remove watch show help" -f -a "watch" -d 'Apply, then stay in the foreground and keep the rules in force'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and not __fish_seen_subcommand_from apply remove watch show help" -f -a "show" -d 'Read lowport\'s rules back from the kernel and print them as mappings'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and not __fish_seen_subcommand_from apply remove watch show help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from apply" -l backend -d 'Firewall backend; default: the config\'s `rules.backend`, else auto: nftables when the kernel has it, unless lowport\'s iptables chains exist or legacy iptables NAT rules are in use (then iptables)' -r -f -a "auto\t''
nftables\t''
iptables\t''"
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from apply" -s c -l config -d 'YAML configuration file. Default: /etc/lowport/lowport.yaml, unless -m is given (then no file is read)' -r -F
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from apply" -s m -l map -d 'Add a mapping, after the file\'s (repeatable): 80:8080, 0.0.0.0:80:127.0.0.1:8080, [::]:443:[::1]:8443 (`lowport --help` lists the forms)' -r
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from apply" -l dry-run -d 'Print what would be sent (an `nft -f` script) and change nothing'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from apply" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from apply" -s q -l quiet -d 'Only errors'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from apply" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from remove" -l backend -d 'Firewall backend; default: the config\'s `rules.backend`, else auto: nftables when the kernel has it, unless lowport\'s iptables chains exist or legacy iptables NAT rules are in use (then iptables)' -r -f -a "auto\t''
nftables\t''
iptables\t''"
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from remove" -s c -l config -d 'YAML configuration file. Default: /etc/lowport/lowport.yaml, unless -m is given (then no file is read)' -r -F
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from remove" -s m -l map -d 'Add a mapping, after the file\'s (repeatable): 80:8080, 0.0.0.0:80:127.0.0.1:8080, [::]:443:[::1]:8443 (`lowport --help` lists the forms)' -r
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from remove" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from remove" -s q -l quiet -d 'Only errors'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from remove" -s h -l help -d 'Print help'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from watch" -l backend -d 'Firewall backend; default: the config\'s `rules.backend`, else auto: nftables when the kernel has it, unless lowport\'s iptables chains exist or legacy iptables NAT rules are in use (then iptables)' -r -f -a "auto\t''
nftables\t''
iptables\t''"
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from watch" -l interval -d 'How often to read iptables-legacy rules, which send no change notifications (one getsockopt per table when nothing changed)' -r
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from watch" -s c -l config -d 'YAML configuration file. Default: /etc/lowport/lowport.yaml, unless -m is given (then no file is read)' -r -F
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from watch" -s m -l map -d 'Add a mapping, after the file\'s (repeatable): 80:8080, 0.0.0.0:80:127.0.0.1:8080, [::]:443:[::1]:8443 (`lowport --help` lists the forms)' -r
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from watch" -l keep-on-exit -d 'On SIGTERM/SIGINT leave the rules and sysctls in place (for a restart or upgrade; a persistent nftables table is then adopted by the next watch without a gap)'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from watch" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from watch" -s q -l quiet -d 'Only errors'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from watch" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from show" -l backend -d 'Firewall backend; default: the config\'s `rules.backend`, else auto: nftables when the kernel has it, unless lowport\'s iptables chains exist or legacy iptables NAT rules are in use (then iptables)' -r -f -a "auto\t''
nftables\t''
iptables\t''"
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from show" -s c -l config -d 'YAML configuration file. Default: /etc/lowport/lowport.yaml, unless -m is given (then no file is read)' -r -F
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from show" -s m -l map -d 'Add a mapping, after the file\'s (repeatable): 80:8080, 0.0.0.0:80:127.0.0.1:8080, [::]:443:[::1]:8443 (`lowport --help` lists the forms)' -r
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from show" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from show" -s q -l quiet -d 'Only errors'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from help" -f -a "apply" -d 'Replace lowport\'s rules with the configured mappings, atomically'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from help" -f -a "remove" -d 'Remove lowport\'s rules and put back the sysctls it changed. Removing nothing succeeds'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from help" -f -a "watch" -d 'Apply, then stay in the foreground and keep the rules in force'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from help" -f -a "show" -d 'Read lowport\'s rules back from the kernel and print them as mappings'
complete -c lowport -n "__fish_lowport_using_subcommand rules; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c lowport -n "__fish_lowport_using_subcommand proxy" -s c -l config -d 'YAML configuration file. Default: /etc/lowport/lowport.yaml, unless -m is given (then no file is read)' -r -F
complete -c lowport -n "__fish_lowport_using_subcommand proxy" -s m -l map -d 'Add a mapping, after the file\'s (repeatable): 80:8080, 0.0.0.0:80:127.0.0.1:8080, [::]:443:[::1]:8443 (`lowport --help` lists the forms)' -r
complete -c lowport -n "__fish_lowport_using_subcommand proxy" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides'
complete -c lowport -n "__fish_lowport_using_subcommand proxy" -s q -l quiet -d 'Only errors'
complete -c lowport -n "__fish_lowport_using_subcommand proxy" -s h -l help -d 'Print help'
complete -c lowport -n "__fish_lowport_using_subcommand check" -s c -l config -d 'YAML configuration file. Default: /etc/lowport/lowport.yaml, unless -m is given (then no file is read)' -r -F
complete -c lowport -n "__fish_lowport_using_subcommand check" -s m -l map -d 'Add a mapping, after the file\'s (repeatable): 80:8080, 0.0.0.0:80:127.0.0.1:8080, [::]:443:[::1]:8443 (`lowport --help` lists the forms)' -r
complete -c lowport -n "__fish_lowport_using_subcommand check" -l json -d 'Print the findings as JSON'
complete -c lowport -n "__fish_lowport_using_subcommand check" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides'
complete -c lowport -n "__fish_lowport_using_subcommand check" -s q -l quiet -d 'Only errors'
complete -c lowport -n "__fish_lowport_using_subcommand check" -s h -l help -d 'Print help'
complete -c lowport -n "__fish_lowport_using_subcommand completions" -s c -l config -d 'YAML configuration file. Default: /etc/lowport/lowport.yaml, unless -m is given (then no file is read)' -r -F
complete -c lowport -n "__fish_lowport_using_subcommand completions" -s m -l map -d 'Add a mapping, after the file\'s (repeatable): 80:8080, 0.0.0.0:80:127.0.0.1:8080, [::]:443:[::1]:8443 (`lowport --help` lists the forms)' -r
complete -c lowport -n "__fish_lowport_using_subcommand completions" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides'
complete -c lowport -n "__fish_lowport_using_subcommand completions" -s q -l quiet -d 'Only errors'
complete -c lowport -n "__fish_lowport_using_subcommand completions" -s h -l help -d 'Print help'
complete -c lowport -n "__fish_lowport_using_subcommand man" -s c -l config -d 'YAML configuration file. Default: /etc/lowport/lowport.yaml, unless -m is given (then no file is read)' -r -F
complete -c lowport -n "__fish_lowport_using_subcommand man" -s m -l map -d 'Add a mapping, after the file\'s (repeatable): 80:8080, 0.0.0.0:80:127.0.0.1:8080, [::]:443:[::1]:8443 (`lowport --help` lists the forms)' -r
complete -c lowport -n "__fish_lowport_using_subcommand man" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides'
complete -c lowport -n "__fish_lowport_using_subcommand man" -s q -l quiet -d 'Only errors'
complete -c lowport -n "__fish_lowport_using_subcommand man" -s h -l help -d 'Print help'
complete -c lowport -n "__fish_lowport_using_subcommand help; and not __fish_seen_subcommand_from rules proxy check completions man help" -f -a "rules" -d 'Install, remove or show kernel NAT rules (one shot), or keep them in force (`rules watch`)'
complete -c lowport -n "__fish_lowport_using_subcommand help; and not __fish_seen_subcommand_from rules proxy check completions man help" -f -a "proxy" -d 'Relay TCP connections in the foreground (splice(2), zero-copy): binds the listen ports, drops every privilege, then serves. SIGTERM/SIGINT drain and exit, SIGHUP reloads the configuration, SIGUSR1 logs counters'
complete -c lowport -n "__fish_lowport_using_subcommand help; and not __fish_seen_subcommand_from rules proxy check completions man help" -f -a "check" -d 'Validate the configuration, then diagnose this host: is something listening on each target (and as whom), are the rules installed and unchanged, do sysctls, input firewalls or other NAT tables get in the way, can the proxy bind its ports. One line per finding (✓ ✗ !), a fix for each problem, and the simplest way to serve the mappings here. Exit 0: all in place; 1: something is missing; 2: bad config'
complete -c lowport -n "__fish_lowport_using_subcommand help; and not __fish_seen_subcommand_from rules proxy check completions man help" -f -a "completions" -d 'Print a shell completion script (for packagers; see dist/completions)'
complete -c lowport -n "__fish_lowport_using_subcommand help; and not __fish_seen_subcommand_from rules proxy check completions man help" -f -a "man" -d 'Print the man page, roff (for packagers; see dist/man)'
complete -c lowport -n "__fish_lowport_using_subcommand help; and not __fish_seen_subcommand_from rules proxy check completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c lowport -n "__fish_lowport_using_subcommand help; and __fish_seen_subcommand_from rules" -f -a "apply" -d 'Replace lowport\'s rules with the configured mappings, atomically'
complete -c lowport -n "__fish_lowport_using_subcommand help; and __fish_seen_subcommand_from rules" -f -a "remove" -d 'Remove lowport\'s rules and put back the sysctls it changed. Removing nothing succeeds'
complete -c lowport -n "__fish_lowport_using_subcommand help; and __fish_seen_subcommand_from rules" -f -a "watch" -d 'Apply, then stay in the foreground and keep the rules in force'
complete -c lowport -n "__fish_lowport_using_subcommand help; and __fish_seen_subcommand_from rules" -f -a "show" -d 'Read lowport\'s rules back from the kernel and print them as mappings'
