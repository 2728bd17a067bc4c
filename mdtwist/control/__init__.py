"""
The control channel: C{mdtwistctl} talking to the running server.

The first process listens on an owner-only UNIX socket (C{[control] socket}, by default
C{control.sock} in the spool directory; L{mdtwist.control.service}) and speaks AMP
(L{twisted.protocols.amp}) there. With C{server.processes} above 1 it passes each command on
to its child processes over the socket pair every child is started with
(L{mdtwist.control.pipe}), and combines their answers. C{mdtwistctl} sends one command and
reads one answer on a blocking socket (L{mdtwist.control.client}).

Adding a command. A feature does not edit a central list; it registers its commands with the
process's L{ControlRegistry <mdtwist.control.registry.ControlRegistry>}, which
L{mdtwist.services.make_service} builds (C{registry}) before the features, in every process:

    1. Define the command in the feature's own module, as a subclass of
       L{ControlCommand <mdtwist.control.commands.ControlCommand>} (an AMP command that may fail
       with L{ControlError <mdtwist.control.commands.ControlError>}, whose text reaches the
       operator), with a new C{commandName} and typed C{arguments} and C{response}.
    2. Register it where the feature's objects are built::

           registry.register(HoldQueue, handler, combine=combine_shards)

       C{handler(**arguments)} carries the command out in one process and returns that
       process's answer, in the shape of the command's response (or a Deferred of it); it
       raises L{ControlError} for a refusal. With C{combine}, every process runs the handler
       and C{combine({shard: answer or None})} builds the answer the operator gets (L{None} for
       a process that did not answer); L{mdtwist.control.handlers.combine_shards} and
       L{combine_status <mdtwist.control.handlers.combine_status>} are examples. Without
       C{combine}, only the first process runs it (for state all processes share, such as
       the Domain Sharing cache).
    3. Give C{mdtwistctl} a subcommand that calls
       L{mdtwist.control.client.call}C{(socket, HoldQueue, {...})} and prints the answer.

A process answers the commands registered in it, so a command must be registered in every
process when it has C{combine}.
"""
